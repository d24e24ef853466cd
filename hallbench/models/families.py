"""One small adapter per architecture family: everything that differs between Qwen3-VL and Mistral3.

The training and evaluation code is written once against this interface; a new family is one more
``Family`` entry, never a copied script. Both families use transformers' own processors
(``Qwen3VLProcessor``, ``PixtralProcessor``), for the tiny models and the real checkpoints alike, so
that every folder hallbench writes loads with ``AutoProcessor.from_pretrained`` in any other tool.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hallbench.errors import HallbenchError


@dataclass(frozen=True)
class Family:
    name: str
    """Family name used in the registry (also the transformers ``model_type``)."""
    model_class: str
    """transformers class name of the full image-text model."""
    processor_class: str
    """transformers processor class (what ``processor_config.json`` names, what ``AutoProcessor`` builds)."""
    extra_inputs: tuple[str, ...]
    """Processor outputs the forward pass needs besides ids, mask and pixel values."""
    image_inputs: tuple[str, ...]
    """Processor outputs that describe the images (concatenated over a batch by the training collator)."""
    vision_special_tokens: tuple[str, ...]
    """Processor attributes holding the ids of every vision token: the image placeholders, and the
    markers around or between them. Evidence is never injected at any of them."""
    memory_tokens: tuple[str, ...]
    """Processor attributes holding the ids whose embeddings form the visual memory V (the merged
    visual features that replaced the image placeholders)."""

    def model_cls(self) -> Any:
        import transformers

        return getattr(transformers, self.model_class)

    @staticmethod
    def language_model(model: Any) -> Any:
        """The text decoder (``model.model.language_model`` in both families in transformers 5.x)."""
        return model.model.language_model

    def decoder_layers(self, model: Any) -> Any:
        """The ``nn.ModuleList`` of decoder layers, where evidence is injected."""
        return self.language_model(model).layers

    def vision_tower(self, model: Any) -> Any:
        """The vision encoder (Qwen3-VL has no ``model.visual`` shortcut in 5.x: it is ``model.model.visual``)."""
        return model.model.visual if self.name == "qwen3_vl" else model.model.vision_tower

    @staticmethod
    def projector(model: Any) -> Any | None:
        """The vision-to-text projector when it is a separate module (Mistral3); Qwen3-VL's merger is in the tower."""
        return getattr(model.model, "multi_modal_projector", None)

    def token_ids(self, processor: Any, attributes: tuple[str, ...]) -> list[int]:
        ids = []
        for attribute in attributes:
            value = getattr(processor, attribute, None)
            if value is None:
                raise HallbenchError(f"the {type(processor).__name__} of this {self.name} model has no {attribute}")
            ids.append(int(value))
        return ids

    def load_tokenizer(self, path: Path) -> Any:
        """The checkpoint's tokenizer as a ``tokenizers``-backed fast tokenizer.

        Mistral checkpoints ship ``tekken.json``; with the ``mistral-common`` package installed (vLLM
        depends on it) ``AutoTokenizer`` returns a ``MistralCommonBackend``, which encodes the literal
        text ``[IMG]`` as characters and so cannot be used with ``PixtralProcessor``. ``mistral_format
        =False`` keeps transformers' own tokenizer: ``tokenizer.json`` if present, else converted from
        ``tekken.json`` (same ids).
        """
        from transformers import AutoTokenizer

        kwargs: dict[str, Any] = {"local_files_only": True}
        if self.name == "mistral3":
            kwargs["mistral_format"] = False
        tokenizer = AutoTokenizer.from_pretrained(str(path), **kwargs)
        # A tekken.json-only folder carries no tokenizer_config.json, so the converted tokenizer knows
        # no bos / eos / pad token (the chat template renders bos_token): config.json names their ids.
        config = read_model_config(path, required=False)  # absent in a LoRA checkpoint-N (adapters + processor only)
        for role in ("bos", "eos", "pad"):
            if getattr(tokenizer, f"{role}_token") is None:
                token_id = (config.get("text_config") or {}).get(f"{role}_token_id", config.get(f"{role}_token_id"))
                if isinstance(token_id, list):
                    token_id = token_id[0]
                if token_id is None and role != "bos":
                    raise HallbenchError(f"{path}: the tokenizer has no {role} token and config.json names no {role}_token_id")
                if token_id is not None:
                    setattr(tokenizer, f"{role}_token", tokenizer.convert_ids_to_tokens(int(token_id)))
        return tokenizer

    def load_processor(self, path: Path) -> Any:
        """The checkpoint's own processor (``AutoProcessor``), with the tokenizer from :meth:`load_tokenizer`."""
        from transformers import AutoProcessor

        tokenizer = self.load_tokenizer(path)
        try:
            processor = AutoProcessor.from_pretrained(str(path), tokenizer=tokenizer, local_files_only=True)
        except (OSError, ValueError, TypeError) as err:
            raise HallbenchError(f"cannot load the processor in {path}: {err}") from None
        if type(processor).__name__ != self.processor_class:
            raise HallbenchError(
                f"{path}: AutoProcessor built a {type(processor).__name__}, expected {self.processor_class} for a {self.name} "
                f"model (is preprocessor_config.json / processor_config.json missing?)"
            )
        if processor.chat_template is None and getattr(tokenizer, "chat_template", None):
            processor.chat_template = tokenizer.chat_template
        if processor.chat_template is None:
            raise HallbenchError(f"{path} has no chat template (chat_template.jinja or chat_template.json)")
        return processor

    def set_pixel_budget(self, processor: Any, min_pixels: int | None, max_pixels: int | None) -> dict[str, Any]:
        """Limit the image sizes the processor produces; returns the resolved ``size`` recorded in run configs.

        Qwen3-VL resizes every image so that its area lies in [min_pixels, max_pixels] (rounded to
        32-px multiples: 16-px patches merged 2x2). Pixtral only bounds the longest edge, so a pixel
        budget becomes ``longest_edge = floor(sqrt(max_pixels))`` (the side of a square of that
        area), and a minimum is not supported.
        """
        image_processor = processor.image_processor
        if self.name == "qwen3_vl":
            size = dict(image_processor.size)
            if min_pixels is not None:
                size["shortest_edge"] = int(min_pixels)
            if max_pixels is not None:
                size["longest_edge"] = int(max_pixels)
            if size["shortest_edge"] > size["longest_edge"]:
                raise HallbenchError(f"--min-pixels {size['shortest_edge']} is more than --max-pixels {size['longest_edge']}")
            image_processor.size = size
            return {"min_pixels": size["shortest_edge"], "max_pixels": size["longest_edge"]}
        if min_pixels is not None:
            raise HallbenchError("--min-pixels: Pixtral (Mistral3) processors never upscale; only --max-pixels applies")
        size = dict(image_processor.size)
        if max_pixels is not None:
            size["longest_edge"] = int(max_pixels**0.5)
            image_processor.size = size
        return {"longest_edge": size["longest_edge"]}


FAMILIES: dict[str, Family] = {
    "qwen3_vl": Family(
        "qwen3_vl",
        "Qwen3VLForConditionalGeneration",
        "Qwen3VLProcessor",
        extra_inputs=("mm_token_type_ids", "image_grid_thw"),
        image_inputs=("pixel_values", "image_grid_thw"),
        vision_special_tokens=("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"),
        memory_tokens=("image_token_id", "video_token_id"),
    ),
    "mistral3": Family(
        "mistral3",
        "Mistral3ForConditionalGeneration",
        "PixtralProcessor",
        extra_inputs=("image_sizes",),
        image_inputs=("pixel_values", "image_sizes"),
        vision_special_tokens=("image_token_id", "image_break_token_id", "image_end_token_id"),
        memory_tokens=("image_token_id",),
    ),
}


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise HallbenchError(
            f"unsupported model type '{name}': hallbench supports {', '.join(FAMILIES)} (Qwen3-VL and Mistral3/Ministral-3 checkpoints)"
        ) from None


def read_model_config(path: Path, *, required: bool = True) -> dict[str, Any]:
    """A model folder's ``config.json``; ``{}`` when it is absent and not ``required`` (a LoRA checkpoint-N)."""
    from hallbench.errors import ModelNotFoundError

    file = Path(path) / "config.json"
    if not required and not file.is_file():
        return {}
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelNotFoundError(f"cannot read {file}: {err}") from None


def family_of_folder(path: Path) -> Family:
    """The family of a saved model folder, from its ``config.json`` ``model_type``."""
    return get_family(read_model_config(path).get("model_type", "<missing model_type>"))
