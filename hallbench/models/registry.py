"""The model registry: short names -> where the weights are and what to call the model in tables.

Importing this module is cheap (no torch, no transformers): the CLI uses it for ``--help`` text and
name validation.

Resolution order for a registry name with a hub id (for example ``qwen2b``):
1. ``<basemodel_dir>/<local_dir>`` (default ``./basemodel/Qwen3-VL-2B-Instruct``, the seed's layout);
2. the Hugging Face cache (``$HF_HOME``/``~/.cache/huggingface``), offline: nothing is downloaded.
A filesystem path is used as it is; any other string with a ``/`` is treated as a hub id and looked
up in the cache only. Tiny models are built in code and need no files at all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from hallbench.errors import HallbenchError, ModelNotFoundError


@dataclass(frozen=True)
class ModelSpec:
    """A model hallbench knows by name."""

    name: str
    """Registry name used on the command line (``qwen2b``)."""
    display_name: str
    """Name used in output folders and tables (``Qwen3-VL-2B``)."""
    family: str
    """Architecture family: a key of ``hallbench.models.families.FAMILIES`` (``qwen3_vl``); a tiny entry is
    built by that family's ``tiny_builder``."""
    hub_id: str | None = None
    """Hugging Face id of the weights; ``None`` for models built in code."""
    local_dir: str | None = None
    """Folder name under ``basemodel/`` where the weights may be placed by hand."""

    @property
    def tiny(self) -> bool:
        return self.hub_id is None


MODEL_REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("qwen2b", "Qwen3-VL-2B", "qwen3_vl", "Qwen/Qwen3-VL-2B-Instruct", "Qwen3-VL-2B-Instruct"),
        ModelSpec("qwen4b", "Qwen3-VL-4B", "qwen3_vl", "Qwen/Qwen3-VL-4B-Instruct", "Qwen3-VL-4B-Instruct"),
        ModelSpec("ministral3b", "Ministral-3-3B", "mistral3", "mistralai/Ministral-3-3B-Instruct-2512", "Ministral-3-3B-Instruct-2512"),
        ModelSpec("llava7b", "LLaVA-1.5-7B", "llava", "llava-hf/llava-1.5-7b-hf", "llava-1.5-7b-hf"),
        ModelSpec("tiny-qwen", "Tiny-Qwen3-VL", "qwen3_vl"),
        ModelSpec("tiny-ministral", "Tiny-Ministral-3", "mistral3"),
        ModelSpec("tiny-llava", "Tiny-LLaVA-1.5", "llava"),
    )
}


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's weights are (``path``), or that it is built in code (``path is None``)."""

    spec: ModelSpec | None
    path: Path | None
    source: str
    """``tiny``, ``basemodel``, ``hf-cache`` or ``path``."""

    @property
    def display_name(self) -> str:
        if self.spec is not None:
            return self.spec.display_name
        assert self.path is not None
        return self.path.name


def basemodel_dir() -> Path:
    """The folder searched for hand-placed weights: ``$HALLBENCH_BASEMODEL_DIR`` or ``./basemodel``."""
    return Path(os.environ.get("HALLBENCH_BASEMODEL_DIR", "basemodel"))


def _hf_cache_lookup(hub_id: str) -> Path | None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(hub_id, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


def resolve_model(name_or_path: str, basemodel: Path | None = None) -> ResolvedModel:
    """Find the weights for a registry name, a local folder or a cached hub id, without any download."""
    basemodel = basemodel if basemodel is not None else basemodel_dir()
    spec = MODEL_REGISTRY.get(name_or_path)
    if spec is not None and spec.tiny:
        return ResolvedModel(spec, None, "tiny")
    if spec is not None:
        assert spec.hub_id is not None and spec.local_dir is not None
        local = basemodel / spec.local_dir
        if (local / "config.json").is_file():
            return ResolvedModel(spec, local, "basemodel")
        cached = _hf_cache_lookup(spec.hub_id)
        if cached is not None:
            return ResolvedModel(spec, cached, "hf-cache")
        raise ModelNotFoundError(
            f"model '{spec.name}' ({spec.hub_id}) not found on this machine. Tried: {local}/config.json, "
            f"and the Hugging Face cache (offline). To provide the weights, download them where there is network "
            f"(`hf download {spec.hub_id} --local-dir {local}`) and copy the folder to {local}, "
            f"or set HALLBENCH_BASEMODEL_DIR to the folder that holds {spec.local_dir}/."
        )
    path = Path(name_or_path).expanduser()
    if path.exists():
        # A LoRA run's checkpoint-N holds adapter_config.json instead (its base is named by the run).
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            raise ModelNotFoundError(
                f"{path} is not a model folder: it has no config.json. Expected a folder written by "
                f"save_pretrained (config.json, *.safetensors, processor files)."
            )
        return ResolvedModel(None, path, "path")
    known = ", ".join(MODEL_REGISTRY)
    if name_or_path.count("/") == 1 and not name_or_path.startswith((".", "/", "~")):
        cached = _hf_cache_lookup(name_or_path)
        if cached is not None:
            return ResolvedModel(None, cached, "hf-cache")
        raise ModelNotFoundError(
            f"hub id '{name_or_path}' is not in the Hugging Face cache and hallbench never downloads. "
            f"Download it where there is network (`hf download {name_or_path} --local-dir DIR`), copy DIR here "
            f"and pass the folder path. Registry names: {known}."
        )
    raise ModelNotFoundError(f"no model folder at {path} and '{name_or_path}' is not a registry name ({known}).")


def get_spec(name: str) -> ModelSpec:
    """The registry entry for ``name`` or an error listing the known names."""
    try:
        return MODEL_REGISTRY[name]
    except KeyError:
        raise HallbenchError(f"unknown model '{name}'; known: {', '.join(MODEL_REGISTRY)}") from None
