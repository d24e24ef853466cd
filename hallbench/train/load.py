"""``load_run``: rebuild a trained model exactly (weights + evidence modules) for evaluation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hallbench.errors import HallbenchError


def find_run_config(path: Path) -> Path | None:
    """The run's ``hallbench_config.json`` for a run folder or one of its ``checkpoint-N`` folders."""
    from hallbench.models.loading import RUN_CONFIG_FILE

    for folder in (path, path.parent):
        if (folder / RUN_CONFIG_FILE).is_file() and (folder == path or path.name.startswith("checkpoint-")):
            return folder / RUN_CONFIG_FILE
    return None


def load_run(path: str | Path, *, dtype: Any = None, device: str = "cpu") -> Any:
    """A :class:`hallbench.models.LoadedModel` for a training run folder or one of its checkpoints.

    The base weights load with ``from_pretrained``; the evidence modules are rebuilt from the run's
    resolved method flags and filled from ``evidence.safetensors`` (every key must match).

    Raises:
        HallbenchError: the folder is not a run, the run has no final weights yet, or the evidence file
            does not match the run's settings.
    """
    import torch

    from hallbench.models.families import get_family
    from hallbench.models.loading import LoadedModel, load_weights, stored_dtype
    from hallbench.models.registry import ResolvedModel
    from hallbench.train.evidence import EvidenceConfig, attach_evidence
    from hallbench.train.run import SUMMARY_FILE
    from hallbench.train.trainer import load_evidence

    path = Path(path)
    config_path = find_run_config(path)
    if config_path is None:
        raise HallbenchError(f"{path} is not a hallbench training run (no hallbench_config.json)")
    run = json.loads(config_path.read_text(encoding="utf-8"))
    if path == config_path.parent and not (path / SUMMARY_FILE).is_file():
        checkpoints = sorted(path.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]) if p.name.split("-")[-1].isdigit() else -1)
        hint = f"; evaluate a checkpoint instead, e.g. {checkpoints[-1]}" if checkpoints else ""
        raise HallbenchError(f"{path} is an unfinished run (no {SUMMARY_FILE}, so no final weights){hint}")
    family = get_family(run["model"]["family"])
    evidence_cfg = EvidenceConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in run["evidence"].items()})
    torch_dtype = dtype or torch.float32
    if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        model = _merged_lora_checkpoint(path, run, torch_dtype)
    else:
        model = load_weights(family, path, torch_dtype)
    processor = family.load_processor(path if (path / "tokenizer_config.json").is_file() else config_path.parent)
    evidence = attach_evidence(model, family, evidence_cfg, processor)
    if evidence is not None:
        load_evidence(evidence, path)
    model = model.to(device=device, dtype=torch_dtype).eval()
    base_folder = config_path.parent
    training_run = {
        "path": str(path.resolve()),  # absolute: the report and later commands run from other folders
        "model": run["model"],
        "variant": run["variant"],
        "evidence": run["evidence"],
        "seed": run.get("train", {}).get("seed"),
        "git_commit": run.get("git_commit"),
    }
    return LoadedModel(
        model=model,
        processor=processor,
        family=family,
        resolved=ResolvedModel(None, path, "run"),
        training_run=training_run,
        checkpoint_dtype=stored_dtype(base_folder if (base_folder / "config.json").is_file() else path),
    )


def _merged_lora_checkpoint(path: Path, run: dict, torch_dtype: Any) -> Any:
    """A LoRA run's ``checkpoint-N`` holds only the adapters: load the run's base model, apply them and merge."""
    from peft import PeftModel

    from hallbench.models.loading import load_model
    from hallbench.models.tiny import TinySize

    base_name = run["model"].get("path") or run["model"]["name"]
    train = run.get("train", {})
    try:
        base = load_model(
            base_name, dtype=str(torch_dtype).replace("torch.", ""), device="cpu",
            tiny_size=TinySize(**train.get("tiny_size", {})), seed=train.get("tiny_seed", 0),
        )  # fmt: skip
    except HallbenchError as err:
        raise HallbenchError(
            f"{path} is a LoRA checkpoint; its base model '{base_name}' (from the run config) cannot be loaded: {err}"
        ) from None
    try:
        return PeftModel.from_pretrained(base.model, str(path), is_trainable=False).merge_and_unload()
    except (OSError, ValueError, RuntimeError) as err:
        raise HallbenchError(f"cannot apply the LoRA adapters in {path} to '{base_name}': {err}") from None
