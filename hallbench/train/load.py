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
    from hallbench.models.loading import LoadedModel, _load_processor
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
    try:
        model = family.model_cls().from_pretrained(path, dtype=torch_dtype, local_files_only=True)
    except OSError as err:
        raise HallbenchError(f"cannot load the weights in {path}: {err}") from None
    processor = _load_processor(path if (path / "tokenizer_config.json").is_file() else config_path.parent, family)
    evidence = attach_evidence(model, family, evidence_cfg)
    if evidence is not None:
        load_evidence(evidence, path)
    model = model.to(device=device, dtype=torch_dtype).eval()
    training_run = {
        "path": str(path),
        "model": run["model"],
        "variant": run["variant"],
        "evidence": run["evidence"],
        "git_commit": run.get("git_commit"),
    }
    return LoadedModel(
        model=model, processor=processor, family=family, resolved=ResolvedModel(None, path, "run"), training_run=training_run
    )
