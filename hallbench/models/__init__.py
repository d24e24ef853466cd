"""Model registry, family adapters, tiny models and loading. Importing this package does not import torch."""

from hallbench.models.families import FAMILIES, Family, get_family
from hallbench.models.loading import LoadedModel, chat_inputs, load_model
from hallbench.models.registry import MODEL_REGISTRY, ModelSpec, ResolvedModel, get_spec, resolve_model
from hallbench.models.tiny import TinySize, build_tiny

__all__ = [
    "FAMILIES",
    "MODEL_REGISTRY",
    "Family",
    "LoadedModel",
    "ModelSpec",
    "ResolvedModel",
    "TinySize",
    "build_tiny",
    "chat_inputs",
    "get_family",
    "get_spec",
    "load_model",
    "resolve_model",
]
