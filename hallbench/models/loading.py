"""Load any supported model (registry name, local folder, cached hub id) with its processor."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hallbench.errors import HallbenchError, ModelNotFoundError
from hallbench.models.families import Family, get_family
from hallbench.models.registry import ResolvedModel, resolve_model
from hallbench.models.tiny import TinySize, build_tiny
from hallbench.train.load import find_run_config

RUN_CONFIG_FILE = "hallbench_config.json"
"""A folder holding this file is a hallbench training run (model + evidence modules), not a plain checkpoint."""


@dataclass
class LoadedModel:
    """A model ready to run: the transformers model, its processor, family adapter and provenance."""

    model: Any
    processor: Any
    family: Family
    resolved: ResolvedModel
    training_run: dict[str, Any] | None = None
    """For a hallbench training run: its path, model, variant and evidence settings (see ``hallbench.train.load_run``)."""

    @property
    def display_name(self) -> str:
        return self.resolved.display_name


def _read_config(path: Path) -> dict:
    try:
        return json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ModelNotFoundError(f"cannot read {path / 'config.json'}: {err}") from None


def _load_processor(path: Path, family: Family) -> Any:
    """The checkpoint's own processor when it loads; else the family's torchvision-free one."""
    own_class = None
    for name in ("processor_config.json", "preprocessor_config.json"):
        file = path / name
        if file.is_file():
            own_class = json.loads(file.read_text(encoding="utf-8")).get("processor_class") or own_class
    hallbench_cls = family.processor_cls()
    if own_class == hallbench_cls.__name__:
        return hallbench_cls.from_pretrained(path, local_files_only=True)
    try:
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(path, local_files_only=True)
    except (ImportError, AttributeError, TypeError, ValueError):
        # Typically a missing torchvision (video processor, Pixtral helper): images only is enough here.
        return hallbench_cls.from_pretrained(path, local_files_only=True)


def load_model(
    name_or_path: str,
    *,
    dtype: str = "auto",
    device: str | None = None,
    tiny_size: TinySize | None = None,
    seed: int = 0,
) -> LoadedModel:
    """Load a model and its processor for inference or training.

    Args:
        name_or_path: a registry name (``qwen2b``, ``tiny-qwen``, ...), a folder written by
            ``save_pretrained``, or a hub id already in the local Hugging Face cache.
        dtype: ``auto`` (bf16 on a GPU with bf16 support, else float32), ``float32``, ``bfloat16``
            or ``float16``.
        device: ``cpu``, ``cuda``, ``cuda:1``...; default: the first GPU if any, else CPU.
        tiny_size: dimensions for the tiny models (ignored for others).
        seed: initialisation seed for the tiny models (ignored for others).

    Raises:
        ModelNotFoundError: the weights are not on this machine; the message names every place tried.
    """
    import torch

    resolved = resolve_model(name_or_path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dtype == "auto":
        use_bf16 = device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        torch_dtype = torch.bfloat16 if use_bf16 else torch.float32
    else:
        try:
            torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
        except KeyError:
            raise HallbenchError(f"unknown dtype '{dtype}'; use auto, float32, bfloat16 or float16") from None

    if resolved.path is None:
        assert resolved.spec is not None
        family = get_family(resolved.spec.family)
        model, processor = build_tiny(resolved.spec.name, tiny_size or TinySize(), seed)
    elif find_run_config(resolved.path) is not None:
        # A hallbench training run (or one of its checkpoints): weights plus evidence modules.
        from hallbench.train.load import load_run

        return load_run(resolved.path, dtype=torch_dtype, device=device)
    else:
        family = get_family(_read_config(resolved.path).get("model_type", "<missing model_type>"))
        processor = _load_processor(resolved.path, family)
        try:
            model = family.model_cls().from_pretrained(resolved.path, dtype=torch_dtype, local_files_only=True)
        except OSError as err:
            raise ModelNotFoundError(f"cannot load the weights in {resolved.path}: {err}") from None
    model = model.to(device=device, dtype=torch_dtype).eval()
    return LoadedModel(model=model, processor=processor, family=family, resolved=resolved)


def chat_inputs(processor: Any, images: list[Any], prompts: list[str]) -> Any:
    """Batched model inputs for one image and one user prompt per sample, left-padded for generation.

    The prompt text may contain ``<image>`` (the LLaVA/seed placeholder); it is removed, since the
    chat template places the image itself before the text.
    """
    if len(images) != len(prompts):
        raise ValueError(f"got {len(images)} images for {len(prompts)} prompts")
    texts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt.replace("<image>", "").strip()}]}],
            add_generation_prompt=True,
        )
        for prompt in prompts
    ]
    processor.tokenizer.padding_side = "left"
    return processor(text=texts, images=images, padding=True, return_tensors="pt")


def answer_questions(
    name_or_path: str, images: list[Path], prompt: str, *, max_new_tokens: int = 32, device: str | None = None
) -> list[str]:
    """Greedy answers of one model to one prompt about each image (used by ``hallbench ask``)."""
    import torch

    from hallbench.data.formats import load_image

    pictures = [load_image(path) for path in images]
    loaded = load_model(name_or_path, device=device)
    inputs = chat_inputs(loaded.processor, pictures, [prompt] * len(pictures)).to(loaded.model.device)
    with torch.inference_mode():
        output = loaded.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return loaded.processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
