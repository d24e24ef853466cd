"""``TrainConfig``: everything that defines a training run, with the seed's defaults.

Precedence: dataclass defaults < the ``--config`` YAML recipe < command-line flags. Unknown keys and
contradictory settings are errors (:class:`hallbench.errors.HallbenchError`), never warnings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from hallbench.errors import HallbenchError
from hallbench.train.method import EvidenceConfig
from hallbench.train.presets import evidence_config, get_preset

DEEPSPEED_PRESETS = ("zero2", "zero3")
# TrainingArguments that hallbench sets itself from its own fields; ``--set`` may not change them,
# so that the resolved config has one source of truth for each.
OWNED_TRAINING_ARGS = frozenset(
    {
        "output_dir", "learning_rate", "num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps",
        "bf16", "fp16", "save_total_limit", "logging_steps", "seed", "data_seed", "deepspeed",
        "gradient_checkpointing", "activation_checkpointing", "remove_unused_columns", "use_cpu", "resume_from_checkpoint",
    }
)  # fmt: skip


@dataclass(frozen=True)
class TrainConfig:
    """One training run: model, variant, data, schedule. Field docs are the ``--help`` texts."""

    model: str
    """Registry name (qwen2b, qwen4b, ministral3b, tiny-qwen, tiny-ministral) or a model folder."""
    variant: str
    """Preset: base, m (+M), ma (+M+A), ours (Ours), or an ablation (abl-*, loss-*)."""
    data: Path
    """LLaVA-format training conversations (JSON list or JSONL), e.g. data/train.json."""
    images: Path
    """Folder the samples' ``image`` names are relative to, e.g. data/img."""
    output_root: Path = Path("runs/train")
    """Runs go to OUTPUT_ROOT/output_model_<model display name>_<variant label>."""
    output_dir: Path | None = None
    """Exact run folder (overrides the name derived from OUTPUT_ROOT)."""
    evidence_overrides: dict[str, Any] = field(default_factory=dict)
    """Method flags that override the preset (inject_position, inject_op, lambda_orth, ...)."""
    learning_rate: float = 1e-5
    """Peak learning rate (the seed's 1e-5)."""
    num_train_epochs: float = 3.0
    """Epochs over the data (the seed's 3)."""
    per_device_train_batch_size: int = 4
    """Samples per device and step (the seed was stuck at 1; any size works here)."""
    gradient_accumulation_steps: int = 1
    """Steps whose gradients are summed before each update."""
    max_length: int = 4096
    """Longest sample in tokens (image tokens included); longer samples are an error, never truncated."""
    min_pixels: int | None = None
    """Qwen3-VL: smallest image area after resizing, in pixels (default: the checkpoint's; 65,536 for the published ones)."""
    max_pixels: int | None = None
    """Largest image area in pixels (Qwen3-VL; Pixtral bounds the longest edge to its square root); default: the checkpoint's."""
    precision: str = "auto"
    """auto (bf16 where the GPU supports it, else fp32), bf16, fp16 or fp32."""
    save_total_limit: int = 2
    """Complete checkpoints kept (one per epoch, or every N steps with ``--set save_steps=N``; the seed's 2)."""
    logging_steps: int = 2
    """Log CE, L_orth, L_ctr every N optimizer steps (the seed's 2)."""
    seed: int = 42
    """Seed of initialisation of new modules, data order and dropout."""
    seed_in_folder: bool = False
    """Name the run folder ``..._seed<N>`` (``--seeds`` sets it): runs of several seeds side by side."""
    tune_vision: bool = False
    """Train the vision tower (encoder and its projector into the language model); frozen by default."""
    lora_rank: int = 0
    """0 = full fine-tuning of the language model; R > 0 = LoRA of rank R (peft) on its linear layers."""
    lora_alpha: float | None = None
    """LoRA scaling alpha; default 2 x rank."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    deepspeed: str | None = None
    """zero2, zero3 (configs shipped with hallbench) or a path to a DeepSpeed JSON config."""
    resume: bool = False
    """Continue an unfinished run from its last checkpoint (same data order)."""
    cache_data: bool = False
    """Keep every tokenised sample in memory after its first use (pixel tensors shared per image): faster epochs, more RAM."""
    tiny_seed: int = 0
    """Tiny models only: seed of their random initial weights."""
    tiny_size: dict[str, Any] = field(default_factory=dict)
    """Tiny models only: ``TinySize`` fields to change (hidden_size, num_layers, image_size, ...)."""
    training_args: dict[str, Any] = field(default_factory=dict)
    """Other transformers TrainingArguments (``--set key=value``), e.g. warmup_steps (a float < 1 is a fraction of the run), max_steps, lr_scheduler_type."""

    def __post_init__(self) -> None:
        problems = []
        if self.learning_rate <= 0 or self.num_train_epochs <= 0:
            problems.append("learning_rate and num_train_epochs must be > 0")
        if self.per_device_train_batch_size < 1 or self.gradient_accumulation_steps < 1:
            problems.append("per_device_train_batch_size and gradient_accumulation_steps must be >= 1")
        if self.precision not in ("auto", "bf16", "fp16", "fp32"):
            problems.append(f"precision must be auto, bf16, fp16 or fp32, got '{self.precision}'")
        if self.lora_rank < 0:
            problems.append("lora_rank must be >= 0")
        if self.lora_rank and self.deepspeed == "zero3":
            problems.append("LoRA with ZeRO-3 is not supported by hallbench; use --deepspeed zero2 (LoRA leaves little to shard)")
        if any(v is not None and v < 1 for v in (self.min_pixels, self.max_pixels)):
            problems.append("min_pixels and max_pixels must be >= 1")
        if self.max_length < 8 or self.logging_steps < 1 or self.save_total_limit < 1:
            problems.append("max_length must be >= 8, logging_steps and save_total_limit >= 1")
        from hallbench.models.tiny import TinySize

        unknown_size = sorted(set(self.tiny_size) - {f.name for f in fields(TinySize)})
        if unknown_size:
            problems.append(f"unknown tiny_size field(s) {unknown_size}; valid: {[f.name for f in fields(TinySize)]}")
        owned = sorted(set(self.training_args) & OWNED_TRAINING_ARGS)
        if owned:
            problems.append(f"--set {', '.join(owned)}: set these with hallbench's own options (see hallbench train --help)")
        if problems:
            raise HallbenchError("invalid training settings: " + "; ".join(problems))
        evidence_config(self.variant, self.evidence_overrides)  # the variant and method flags must agree

    @property
    def evidence(self) -> EvidenceConfig:
        return evidence_config(self.variant, self.evidence_overrides)

    @property
    def preset_name(self) -> str:
        return get_preset(self.variant).name

    def to_dict(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["evidence"] = dataclasses.asdict(self.evidence)
        return _jsonable(values)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def load_recipe(path: Path) -> dict[str, Any]:
    """A YAML recipe: top-level keys are TrainConfig fields; ``evidence:`` and ``set:`` are mappings.

    Example::

        model: qwen2b
        variant: ours
        data: data/train.json
        images: data/img
        deepspeed: zero2
        evidence: {aux_layers: "0,1,2", tau: 0.05}
        set: {warmup_steps: 0.03, lr_scheduler_type: cosine}
    """
    import yaml

    from hallbench.data.formats import read_utf8

    try:
        raw = yaml.safe_load(read_utf8(path))
    except yaml.YAMLError as err:
        raise HallbenchError(f"{path} is not valid YAML: {err}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise HallbenchError(f"{path}: expected a mapping of training options, found {type(raw).__name__}")
    known = {f.name for f in fields(TrainConfig)} - {"evidence_overrides", "training_args", "tiny_size"}
    recipe: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "evidence":
            if not isinstance(value, dict):
                raise HallbenchError(f"{path}: 'evidence' must be a mapping of method flags")
            recipe["evidence_overrides"] = value
        elif key == "tiny_size":
            if not isinstance(value, dict):
                raise HallbenchError(f"{path}: 'tiny_size' must be a mapping of TinySize fields")
            recipe["tiny_size"] = value
        elif key == "set":
            if not isinstance(value, dict):
                raise HallbenchError(f"{path}: 'set' must be a mapping of TrainingArguments")
            recipe["training_args"] = value
        elif key in known:
            recipe[key] = value
        else:
            raise HallbenchError(f"{path}: unknown key '{key}'; valid keys: {', '.join(sorted(known | {'evidence', 'set', 'tiny_size'}))}")
    for key in ("data", "images", "output_root", "output_dir"):
        if recipe.get(key) is not None:
            recipe[key] = Path(recipe[key])
    return recipe


def merge_settings(recipe: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    """Flags given on the command line win over the recipe; mappings are merged key by key."""
    merged = dict(recipe)
    for key, value in flags.items():
        if key in ("evidence_overrides", "training_args", "tiny_size"):
            merged[key] = {**merged.get(key, {}), **value}
        else:
            merged[key] = value
    return merged
