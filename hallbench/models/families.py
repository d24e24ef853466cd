"""One small adapter per architecture family: everything that differs between Qwen3-VL and Mistral3.

The training and evaluation code is written once against this interface; a new family is one more
``Family`` entry, never a copied script.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hallbench.errors import HallbenchError


@dataclass(frozen=True)
class Family:
    name: str
    """Family name used in the registry (also the transformers ``model_type``)."""
    model_class: str
    """transformers class name of the full image-text model."""
    processor_class: str
    """hallbench processor class (``hallbench.models.processors``) used when the checkpoint's own cannot load."""
    extra_inputs: tuple[str, ...]
    """Processor outputs the forward pass needs besides ids, mask and pixel values."""

    def model_cls(self) -> Any:
        import transformers

        return getattr(transformers, self.model_class)

    def processor_cls(self) -> Any:
        from hallbench.models import processors

        return getattr(processors, self.processor_class)

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


FAMILIES: dict[str, Family] = {
    "qwen3_vl": Family("qwen3_vl", "Qwen3VLForConditionalGeneration", "Qwen3VLImageProcessorOnly", ("mm_token_type_ids", "image_grid_thw")),
    "mistral3": Family("mistral3", "Mistral3ForConditionalGeneration", "PixtralImageProcessorOnly", ("image_sizes",)),
}


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise HallbenchError(
            f"unsupported model type '{name}': hallbench supports {', '.join(FAMILIES)} (Qwen3-VL and Mistral3/Ministral-3 checkpoints)"
        ) from None
