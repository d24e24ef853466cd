"""Load any supported model (registry name, local folder, cached hub id) with its processor."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hallbench.errors import HallbenchError, ModelNotFoundError
from hallbench.models.families import Family, family_of_folder, get_family, read_model_config
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
    checkpoint_dtype: str = "float32"
    """The dtype the weights are stored in (``bfloat16`` for the published checkpoints; float32 for the
    tiny models); training saves its final weights in it, so a run folder is the checkpoint's size."""

    @property
    def display_name(self) -> str:
        return self.resolved.display_name


TORCH_DTYPES = ("float32", "bfloat16", "float16")


def stored_dtype(path: Path) -> str:
    """The dtype a checkpoint declares (``config.json`` ``dtype`` / ``torch_dtype``, else its text config's); float32 if none."""
    config = read_model_config(path, required=False)
    for section in (config, config.get("text_config") or {}):
        value = section.get("dtype") or section.get("torch_dtype")
        if value in TORCH_DTYPES:
            return value
    return "float32"


def load_weights(family: Family, path: Path, torch_dtype: Any) -> Any:
    """``from_pretrained`` of a model folder, never leaving quantized layers behind.

    Ministral-3-3B-Instruct-2512 is published in FP8. On a GPU of compute capability >= 8.9
    transformers would keep ``FP8Linear`` layers holding float8 weights; any later ``.to(dtype)``
    then casts the raw float8 values without their scales (outputs thousands of times too large,
    silently), and full fine-tuning is refused. So FP8 checkpoints are always loaded dequantized
    (``FineGrainedFP8Config(dequantize=True)``: weight x scale, in ``torch_dtype``) on every device,
    which is also what transformers does by itself on CPUs and older GPUs.
    """
    from transformers import FineGrainedFP8Config

    config = read_model_config(path)
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "local_files_only": True}
    quantization = config.get("quantization_config")
    if quantization:
        method = quantization.get("quant_method")
        if method != "fp8":
            raise HallbenchError(
                f"{path} is quantized with '{method}'; hallbench trains and evaluates full-precision weights and dequantizes "
                "FP8 checkpoints only. Use the unquantized checkpoint."
            )
        kwargs["quantization_config"] = FineGrainedFP8Config(dequantize=True)
    try:
        model = family.model_cls().from_pretrained(str(path), **kwargs)
    except OSError as err:
        raise ModelNotFoundError(f"cannot load the weights in {path}: {err}") from None
    if getattr(model, "hf_quantizer", None) is not None or getattr(model, "is_quantized", False):
        raise HallbenchError(f"{path}: the model is still quantized after loading with dequantize=True; refusing to use it")
    return model


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
            or ``float16``. The weights are loaded in it directly (never loaded in one dtype and
            cast), so a bf16 checkpoint loaded in bf16 takes its own size in memory.
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
        if dtype not in TORCH_DTYPES:
            raise HallbenchError(f"unknown dtype '{dtype}'; use auto, {', '.join(TORCH_DTYPES)}")
        torch_dtype = getattr(torch, dtype)

    if resolved.path is None:
        assert resolved.spec is not None
        family = get_family(resolved.spec.family)
        model, processor = build_tiny(resolved.spec.name, tiny_size or TinySize(), seed)
        model = model.to(dtype=torch_dtype)
        checkpoint_dtype = "float32"
    elif find_run_config(resolved.path) is not None:
        # A hallbench training run (or one of its checkpoints): weights plus evidence modules.
        from hallbench.train.load import load_run

        return load_run(resolved.path, dtype=torch_dtype, device=device)
    else:
        family = family_of_folder(resolved.path)
        processor = family.load_processor(resolved.path)
        model = load_weights(family, resolved.path, torch_dtype)
        checkpoint_dtype = stored_dtype(resolved.path)
    model = model.to(device=device).eval()
    return LoadedModel(model=model, processor=processor, family=family, resolved=resolved, checkpoint_dtype=checkpoint_dtype)


def chat_inputs(processor: Any, images: list[Any], prompts: list[str]) -> Any:
    """Batched model inputs for one image and one user prompt per sample, left-padded for generation.

    The prompt text may contain ``<image>`` (the LLaVA/seed placeholder); it is removed, since the
    chat template places the image itself before the text.
    """
    if len(images) != len(prompts):
        raise ValueError(f"got {len(images)} images for {len(prompts)} prompts")
    from hallbench.eval.engine import chat_messages

    texts = [processor.apply_chat_template(chat_messages(1, prompt), add_generation_prompt=True) for prompt in prompts]
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
