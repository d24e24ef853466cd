"""One small adapter per architecture family: everything that differs between the supported VLMs.

The training and evaluation code is written once against this interface; a new family is one more
``FAMILIES`` entry (declared data: nothing outside this module asks which family a model is) plus
its tiny builder in ``hallbench.models.tiny`` (docs/adding_a_model.md). Every family uses
transformers' own processor (``processor_class``), for the tiny models and the real checkpoints
alike, so that every folder hallbench writes loads with ``AutoProcessor.from_pretrained`` in any
other tool.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path
from typing import Any

from hallbench.errors import HallbenchError

PIXEL_BUDGETS = ("area", "longest_edge", "fixed")
"""How a family's image processor is told an image size (see ``Family.pixel_budget``)."""


@dataclass(frozen=True)
class Family:
    name: str
    """Family name used in the registry (also the transformers ``model_type``)."""
    model_class: str
    """transformers class name of the full image-text model."""
    processor_class: str
    """transformers processor class (what ``processor_config.json`` names, what ``AutoProcessor`` builds)."""
    extra_inputs: tuple[str, ...]
    """Processor outputs the forward pass needs besides ids, mask and pixel values. ``mm_token_type_ids``
    (transformers' per-token modality types, 0 text / 1 image / 2 video) among them makes the training
    encoder keep one per token and the collator pad them with 0."""
    image_inputs: tuple[str, ...]
    """Processor outputs that describe the images (concatenated over a batch by the training collator)."""
    vision_special_tokens: tuple[str, ...]
    """Processor attributes holding the ids of every vision token: the image placeholders, and the
    markers around or between them. Evidence is never injected at any of them."""
    memory_tokens: tuple[str, ...]
    """Processor attributes holding the ids whose embeddings form the visual memory V (the merged
    visual features that replaced the image placeholders)."""
    label: str
    """What the family covers, for messages (``Qwen3-VL``)."""
    vision_tower_path: str
    """Attribute path from the full model to the vision encoder (``model.visual``); frozen unless ``tune_vision``."""
    projector_path: str | None
    """Attribute path to the vision-to-text projector when it is a module of its own
    (``model.multi_modal_projector``); ``None`` when it is part of the tower (Qwen3-VL's merger)."""
    pixel_budget: str
    """How ``--min-pixels`` / ``--max-pixels`` reach the image processor (:meth:`set_pixel_budget`):
    ``area``: its ``size`` ``shortest_edge`` / ``longest_edge`` are the smallest and largest image
    *areas* in pixels (Qwen2-VL's image processor), set as given; ``longest_edge``: ``size
    ["longest_edge"]`` bounds the longest side (Pixtral), so a budget of N pixels becomes
    floor(sqrt(N)) (the side of a square of that area) and a minimum is refused; ``fixed``: every
    image becomes the processor's ``crop_size`` (CLIP: shortest edge resized, centre cropped), the
    one size the vision tower's position embeddings know, so both bounds are refused."""
    tiny_builder: str
    """Name of the function in ``hallbench.models.tiny`` that builds this family's tiny model and processor."""
    tokenizer_kwargs: Mapping[str, Any] = field(default_factory=dict, hash=False)
    """Extra ``AutoTokenizer.from_pretrained`` arguments for the checkpoints' tokenizer files (:meth:`load_tokenizer`);
    read, never modified."""
    language_model_path: str = "model.language_model"
    """Attribute path to the text decoder, whose ``layers`` get the evidence (transformers 5.x VLMs all
    use ``model.language_model``); LoRA adapts the linear layers below it."""

    def __post_init__(self) -> None:
        if self.pixel_budget not in PIXEL_BUDGETS:
            raise HallbenchError(f"family {self.name}: pixel_budget must be one of {', '.join(PIXEL_BUDGETS)}, got '{self.pixel_budget}'")

    def model_cls(self) -> Any:
        import transformers

        return getattr(transformers, self.model_class)

    @staticmethod
    def _module(model: Any, path: str) -> Any:
        try:
            return reduce(getattr, path.split("."), model)
        except AttributeError:
            raise HallbenchError(f"a {type(model).__name__} has no {path} (the family's declared module path)") from None

    def language_model(self, model: Any) -> Any:
        """The text decoder (``language_model_path``)."""
        return self._module(model, self.language_model_path)

    def decoder_layers(self, model: Any) -> Any:
        """The ``nn.ModuleList`` of decoder layers, where evidence is injected."""
        return self.language_model(model).layers

    def vision_tower(self, model: Any) -> Any:
        """The vision encoder (``vision_tower_path``)."""
        return self._module(model, self.vision_tower_path)

    def projector(self, model: Any) -> Any | None:
        """The vision-to-text projector (``projector_path``), or ``None`` when the tower holds it."""
        return self._module(model, self.projector_path) if self.projector_path is not None else None

    def token_ids(self, processor: Any, attributes: tuple[str, ...]) -> list[int]:
        ids = []
        for attribute in attributes:
            value = getattr(processor, attribute, None)
            if value is None:
                raise HallbenchError(f"the {type(processor).__name__} of this {self.name} model has no {attribute}")
            ids.append(int(value))
        return ids

    def load_tokenizer(self, path: Path) -> Any:
        """The checkpoint's tokenizer as a ``tokenizers``-backed fast tokenizer (with ``tokenizer_kwargs``)."""
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True, **self.tokenizer_kwargs)
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
        """Limit the image sizes the processor produces, the family's ``pixel_budget`` way; returns the
        resolved size recorded in run and evaluation configs (``None`` bounds keep the checkpoint's)."""
        image_processor = processor.image_processor
        size = dict(image_processor.size)
        if self.pixel_budget == "area":
            # Resized so that the area lies in [shortest_edge, longest_edge], in steps of the merged patch.
            if min_pixels is not None:
                size["shortest_edge"] = int(min_pixels)
            if max_pixels is not None:
                size["longest_edge"] = int(max_pixels)
            if size["shortest_edge"] > size["longest_edge"]:
                raise HallbenchError(f"--min-pixels {size['shortest_edge']} is more than --max-pixels {size['longest_edge']}")
            image_processor.size = size
            return {"min_pixels": size["shortest_edge"], "max_pixels": size["longest_edge"]}
        if self.pixel_budget == "fixed":
            crop = dict(image_processor.crop_size)
            if min_pixels is not None or max_pixels is not None:
                raise HallbenchError(
                    f"--min-pixels / --max-pixels: {self.label} models see every image at one size "
                    f"({crop['height']} x {crop['width']} px, the {type(image_processor).__name__}'s crop_size); leave both unset"
                )
            return {"height": int(crop["height"]), "width": int(crop["width"])}
        # longest_edge: images larger than the bound are scaled down, smaller ones are left as they are.
        if min_pixels is not None:
            raise HallbenchError(
                f"--min-pixels: the {self.processor_class} of {self.label} models never upscales; only --max-pixels applies"
            )
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
        label="Qwen3-VL",
        vision_tower_path="model.visual",  # transformers 5.x has no model.visual shortcut on the full model
        projector_path=None,  # the merger is part of the tower
        pixel_budget="area",
        tiny_builder="build_tiny_qwen",
    ),
    "mistral3": Family(
        "mistral3",
        "Mistral3ForConditionalGeneration",
        "PixtralProcessor",
        extra_inputs=("image_sizes",),
        image_inputs=("pixel_values", "image_sizes"),
        vision_special_tokens=("image_token_id", "image_break_token_id", "image_end_token_id"),
        memory_tokens=("image_token_id",),
        label="Mistral3/Ministral-3",
        vision_tower_path="model.vision_tower",
        projector_path="model.multi_modal_projector",
        pixel_budget="longest_edge",
        tiny_builder="build_tiny_ministral",
        # The checkpoints ship tekken.json; with mistral-common installed (vLLM depends on it)
        # AutoTokenizer would return a MistralCommonBackend, which encodes the literal text [IMG] as
        # characters and so cannot serve PixtralProcessor. mistral_format=False keeps transformers' own
        # tokenizer: tokenizer.json if present, else converted from tekken.json (same ids).
        tokenizer_kwargs={"mistral_format": False},
    ),
    "llava": Family(
        "llava",
        "LlavaForConditionalGeneration",
        "LlavaProcessor",
        extra_inputs=(),
        image_inputs=("pixel_values",),
        # One <image> per visual feature and no markers around them (the "\n" after them is text).
        vision_special_tokens=("image_token_id",),
        memory_tokens=("image_token_id",),
        label="LLaVA-1.5",
        vision_tower_path="model.vision_tower",
        projector_path="model.multi_modal_projector",
        pixel_budget="fixed",
        tiny_builder="build_tiny_llava",
    ),
}


def conversation_messages(turns: list[tuple[str, str]], n_images: int, system_prompt: str | None = None) -> list[dict]:
    """The chat-template messages of a conversation, for training and evaluation alike (one builder,
    so that a model is asked exactly as it was trained): an optional system turn, then the ``(role,
    text)`` turns, the ``n_images`` image parts at the start of the first user turn (the images come
    first in every family's published examples); ``<image>`` markers in the text are dropped.

    Without ``system_prompt`` the chat template's own default applies (Ministral-3's template
    inserts its default system prompt; Qwen3-VL's and LLaVA's have none).
    """
    messages = [{"role": "system", "content": [{"type": "text", "text": system_prompt}]}] if system_prompt else []
    images_placed = False
    for role, text in turns:
        content = [{"type": "text", "text": text.replace("<image>", "").strip()}]
        if role == "user" and not images_placed:
            content = [{"type": "image"} for _ in range(n_images)] + content
            images_placed = True
        messages.append({"role": role, "content": content})
    return messages


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        covered = ", ".join(family.label for family in FAMILIES.values())
        raise HallbenchError(f"unsupported model type '{name}': hallbench supports {', '.join(FAMILIES)} ({covered} checkpoints)") from None


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
