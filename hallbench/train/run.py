"""``hallbench train``: one run (:func:`run_train`) or a matrix of runs (:func:`run_matrix`).

A run folder is self-describing:

    OUTPUT_ROOT/output_model_<model display name>_<variant label>[_seed<N>]/   (_seed<N> with --seeds)
      hallbench_config.json   model, variant, every method flag, training settings, data path + sha256, versions
      train_log.jsonl         one line per logging step: loss, ce, l_orth, l_ctr, learning rate, grad norm
      checkpoint-N/           one per epoch, or every save_steps (the last save_total_limit complete ones kept), for --resume;
                              complete once hallbench_checkpoint.json is in it (a torn one is skipped and rewritten)
      config.json, model.safetensors, processor files   the trained model (save_pretrained; loadable alone)
      evidence.safetensors    the evidence modules (absent for Base)
      train_summary.json      written last: its presence means the run finished

Re-running a finished run's command is a no-op (``skipped``); a folder holding a run with other
settings is an error, so that one folder never mixes two experiments. The learning rate is the one
setting a resume may change (the usual answer to a divergence); the change is recorded under
``resumes`` in ``hallbench_config.json``. The folder is locked while a run writes into it.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

from hallbench.errors import HallbenchError, SettingsChangedError
from hallbench.models.loading import RUN_CONFIG_FILE
from hallbench.provenance import identity_changes, provenance, sha256_file
from hallbench.runfolder import folder_content, locked_output_folder, write_json_atomic
from hallbench.train.config import DEEPSPEED_PRESETS, TrainConfig
from hallbench.train.presets import get_preset

SUMMARY_FILE = "train_summary.json"
RUN_FORMAT = "hallbench-run/1"
PAPER_MODELS = ("qwen2b", "qwen4b", "ministral3b")
log = logging.getLogger(__name__)
# Settings that may differ between a run and its continuation without changing the experiment.
NON_IDENTITY = (
    "resume", "output_root", "output_dir", "deepspeed", "cache_data", "save_total_limit", "logging_steps", "seed_in_folder",
)  # fmt: skip
# TrainingArguments (``--set``) that only say when to save: not part of the experiment either.
NON_IDENTITY_ARGS = ("save_strategy", "save_steps", "report_to")
# May differ on resume (recorded); a finished run is still identified by the rate it ended with.
RESUMABLE_CHANGES = ("learning_rate",)


@dataclass
class TrainResult:
    path: Path
    status: str
    """``trained``, ``skipped`` (already finished with the same settings) or ``reused`` (a preset with the
    method settings of an earlier one: its folder links to that run's files)."""
    summary: dict[str, Any]
    model: Any = None
    """The trained model in memory (``trained`` runs only; LoRA adapters merged)."""

    def loss_terms(self, digits: int = 4) -> str:
        """``"ce 0.5120, l_orth 0.0030, l_ctr 3.2300"`` from the last logged step (the terms the variant has)."""
        last = (self.summary or {}).get("last_log") or {}
        return ", ".join(f"{k} {last[k]:.{digits}f}" for k in ("ce", "l_orth", "l_ctr") if last.get(k) is not None)


def run_folder(cfg: TrainConfig) -> Path:
    """``output_dir``, or OUTPUT_ROOT/output_model_<display name>_<label> as in the seed's scripts
    (``_seed<N>`` appended with ``seed_in_folder``)."""
    if cfg.output_dir is not None:
        return Path(cfg.output_dir)
    from hallbench.models.registry import MODEL_REGISTRY

    spec = MODEL_REGISTRY.get(cfg.model)
    display = spec.display_name if spec else Path(cfg.model).name
    suffix = f"_seed{cfg.seed}" if cfg.seed_in_folder else ""
    return Path(cfg.output_root) / f"output_model_{display}_{get_preset(cfg.variant).folder_label}{suffix}"


def deepspeed_config_path(value: str | None) -> str | None:
    """``zero2``/``zero3`` -> the JSON shipped in ``hallbench/train/deepspeed/``; a path is checked and returned."""
    if value is None:
        return None
    if value in DEEPSPEED_PRESETS:
        return str(resources.files("hallbench.train") / "deepspeed" / f"{value}.json")
    path = Path(value)
    if not path.is_file():
        raise HallbenchError(f"--deepspeed {value}: not zero2, zero3 or an existing JSON file")
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise HallbenchError(f"--deepspeed {path} is not valid JSON: {err}") from None
    return str(path)


def _identity(cfg: TrainConfig) -> dict[str, Any]:
    values = cfg.to_dict()
    for key in NON_IDENTITY:
        values.pop(key, None)
    values["training_args"] = {k: v for k, v in values["training_args"].items() if k not in NON_IDENTITY_ARGS}
    values["variant"] = cfg.preset_name
    return values


def _check_existing(folder: Path, cfg: TrainConfig) -> str:
    """``new``, ``finished`` or ``unfinished``; a run with other settings is an error.

    A resumed unfinished run may change the learning rate (``RESUMABLE_CHANGES``) and nothing else.
    """
    config_path = folder / RUN_CONFIG_FILE
    if not config_path.is_file():
        if folder_content(folder):
            raise HallbenchError(f"{folder} exists and is not a hallbench run; choose another --output-root or --output-dir")
        return "new"
    try:
        previous = json.loads(config_path.read_text(encoding="utf-8"))["identity"]
    except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as err:
        raise HallbenchError(f"{config_path} is corrupt ({err}); move the folder away or choose another --output-dir") from None
    identity = json.loads(json.dumps(_identity(cfg)))
    finished = (folder / SUMMARY_FILE).is_file()
    if not finished:
        resumable = identity_changes({k: previous.get(k) for k in RESUMABLE_CHANGES}, {k: identity.get(k) for k in RESUMABLE_CHANGES})
        previous = {**previous, **{k: identity.get(k) for k in RESUMABLE_CHANGES}}
        if resumable and not cfg.resume and not identity_changes(previous, identity):
            raise HallbenchError(f"{folder} holds an unfinished run of these settings but {resumable}; add --resume to continue it so")
    details = identity_changes(previous, identity)
    if details:
        raise SettingsChangedError(folder, details, "choose another --output-dir")
    return "finished" if finished else "unfinished"


def _precision(cfg: TrainConfig) -> str:
    import torch

    if cfg.precision != "auto":
        return cfg.precision
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


def _freeze(model: Any, family: Any, cfg: TrainConfig) -> Any:
    """Vision tower (and projector) frozen unless tune_vision; LoRA on the language model if lora_rank > 0."""
    if cfg.lora_rank:
        from peft import LoraConfig, get_peft_model

        # Only the language model's linear layers (below the family's language_model_path): the
        # evidence modules' q/k projections are trained in full, the vision tower stays frozen.
        lora = LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha or 2 * cfg.lora_rank,
            lora_dropout=0.05,
            target_modules=rf".*{re.escape(family.language_model_path)}\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
        )
        model = get_peft_model(model, lora)
        inner = model.get_base_model()
    else:
        inner = model
    vision = [family.vision_tower(inner)]
    projector = family.projector(inner)
    if projector is not None:
        vision.append(projector)
    for module in vision:
        module.requires_grad_(cfg.tune_vision)
    if hasattr(inner, "evidence"):
        inner.evidence.requires_grad_(True)
    return model


def _skip_inference_only_cpu_ops() -> None:
    """Without CUDA, DeepSpeed's communication backend JIT-builds its shared-memory all-reduce op
    (``deepspeed_shm_comm``, 50-100 s of ninja on two cores, again for every new environment) when it
    starts. The op serves only ``inference_all_reduce``, never ZeRO training, so it is marked
    unavailable, as on a machine where it cannot build: DeepSpeed then uses the process group (gloo)."""
    import torch

    if torch.cuda.is_available():
        return
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def _training_arguments(cfg: TrainConfig, folder: Path, precision: str) -> Any:
    import torch
    from transformers import TrainingArguments

    use_cpu = not torch.cuda.is_available()
    kwargs = dict(
        output_dir=str(folder),
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.num_train_epochs,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        save_strategy="steps" if "save_steps" in cfg.training_args else "epoch",
        save_total_limit=cfg.save_total_limit,
        logging_steps=cfg.logging_steps,
        seed=cfg.seed,
        data_seed=cfg.seed,
        deepspeed=deepspeed_config_path(cfg.deepspeed),
        activation_checkpointing=cfg.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if cfg.gradient_checkpointing else None,
        remove_unused_columns=False,
        report_to=[],  # no tracker unless asked: --set report_to=tensorboard (logs in RUN/runs/), wandb (WANDB_MODE=offline)
        use_cpu=use_cpu,
        disable_tqdm=False,
    )
    kwargs.update(cfg.training_args)
    try:
        return TrainingArguments(**kwargs)
    except TypeError as err:
        import difflib

        valid = sorted(TrainingArguments.__dataclass_fields__)
        unknown = [k for k in cfg.training_args if k not in TrainingArguments.__dataclass_fields__]
        hints = [f"{k} (did you mean {', '.join(close)}?)" for k in unknown if (close := difflib.get_close_matches(k, valid, n=3))]
        hint = f"; {'; '.join(hints)}" if hints else ""
        raise HallbenchError(
            f"--set {', '.join(unknown) or ''}: not a TrainingArguments field ({err}){hint}; the fields: "
            "https://huggingface.co/docs/transformers/main_classes/trainer#transformers.TrainingArguments"
        ) from None
    except ValueError as err:
        raise HallbenchError(f"invalid TrainingArguments: {err}") from None


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def run_train(cfg: TrainConfig, *, progress: bool = True) -> TrainResult:
    """Train one variant of one model into its run folder (resuming or skipping as the folder says).

    The folder is locked for the run (``hallbench.runfolder.FolderLock``): a second training into
    it stops with the holder's pid and command.
    """
    folder = run_folder(cfg)
    option = "--output-dir" if cfg.output_dir is not None else "--output-root"
    twin = twin_preset(cfg)
    if twin is not None:
        # An ablation that equals a Table 2 variant (abl-all-ours is +M+A): train that one once, then
        # give this preset a folder of links to it, so that both names evaluate the same weights.
        source = run_train(replace(cfg, variant=twin), progress=progress)
        with locked_output_folder(folder, option):
            return _link_twin(cfg, folder, source)
    with locked_output_folder(folder, option):
        return _train_locked(cfg, folder, progress=progress)


def twin_preset(cfg: TrainConfig) -> str | None:
    """The earlier preset (Table 2 first) with exactly this preset's method settings, if any.

    Only for the run-folder layout (``--output-root``) and without ``--evidence`` overrides: a
    preset's run is then fully determined by its method settings and the training settings.
    """
    from hallbench.train.presets import PRESETS

    if cfg.output_dir is not None or cfg.evidence_overrides:
        return None
    own = get_preset(cfg.variant)
    for other in PRESETS.values():
        if other.name == own.name:
            return None
        if other.evidence == own.evidence:
            return other.name
    return None


def _link_twin(cfg: TrainConfig, folder: Path, source: TrainResult) -> TrainResult:
    """Make ``folder`` the run of ``cfg.variant`` by relative links to the files of ``source``'s run.

    Its own ``hallbench_config.json`` names its preset (and ``same_as``); checkpoints are not linked
    (there is nothing to resume). A folder already linked to the same run is left as it is.
    """
    preset = get_preset(cfg.variant)
    config = json.loads((source.path / RUN_CONFIG_FILE).read_text(encoding="utf-8"))
    summary_path = folder / SUMMARY_FILE
    if summary_path.is_file():
        previous = json.loads(summary_path.read_text(encoding="utf-8"))
        if previous.get("same_as") == source.path.name:
            return TrainResult(folder, "skipped", previous, source.model)
    if folder_content(folder) and not (folder / RUN_CONFIG_FILE).is_file():
        raise HallbenchError(f"{folder} exists and is not a hallbench run; choose another --output-root")
    for item in sorted(source.path.iterdir()):
        if item.name in (RUN_CONFIG_FILE, SUMMARY_FILE) or item.name.startswith((".", "checkpoint-")):
            continue
        link = folder / item.name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(Path("..") / source.path.name / item.name)
    config["variant"] = {"name": preset.name, "label": preset.label, "table": preset.table}
    config["identity"] = {**config["identity"], "variant": preset.name}
    config["same_as"] = source.path.name
    config["train"] = {**config["train"], "variant": cfg.variant}
    write_json_atomic(folder / RUN_CONFIG_FILE, config)
    summary = {**source.summary, "same_as": source.path.name}
    write_json_atomic(summary_path, summary)
    return TrainResult(folder, "reused", summary, source.model)


def _train_locked(cfg: TrainConfig, folder: Path, *, progress: bool) -> TrainResult:
    import torch
    from transformers import set_seed

    from hallbench.models.loading import load_model
    from hallbench.train.data import Collator, ConversationDataset
    from hallbench.train.evidence import attach_evidence
    from hallbench.train.trainer import TRAIN_LOG_FILE, EvidenceTrainer, JsonlLogCallback, checkpoints

    state = _check_existing(folder, cfg)
    if state == "finished":
        return TrainResult(folder, "skipped", json.loads((folder / SUMMARY_FILE).read_text(encoding="utf-8")))
    if state == "unfinished" and not cfg.resume:
        raise HallbenchError(f"{folder} holds an unfinished run with the same settings; add --resume to continue it")
    preset = get_preset(cfg.variant)
    evidence_cfg = cfg.evidence
    precision = _precision(cfg)

    if cfg.deepspeed:
        _skip_inference_only_cpu_ops()
    # TrainingArguments first: with ZeRO-3 they register the DeepSpeed config, and only then does
    # from_pretrained partition the weights while loading (each rank never holds the whole model).
    args = _training_arguments(cfg, folder, precision)
    if cfg.deepspeed:
        # deepspeed.comm wraps the process group TrainingArguments started: without it, ZeRO-3's
        # zero.Init (entered by from_config/from_pretrained) would read a world size of 1.
        import deepspeed

        deepspeed.init_distributed()
    set_seed(cfg.seed)
    from hallbench.models.tiny import TinySize

    loaded = load_model(cfg.model, dtype=_load_dtype(cfg, precision), device="cpu", seed=cfg.tiny_seed, tiny_size=TinySize(**cfg.tiny_size))
    model, processor, family = loaded.model, loaded.processor, loaded.family
    pixel_budget = family.set_pixel_budget(processor, cfg.min_pixels, cfg.max_pixels)
    dataset = ConversationDataset(cfg.data, cfg.images, processor, family, cfg.max_length, cache=cfg.cache_data)
    torch.manual_seed(cfg.seed)  # evidence initialisation does not depend on what loading consumed
    evidence = attach_evidence(model, family, evidence_cfg, processor)
    if evidence is not None and cfg.lora_rank and not cfg.deepspeed:
        # A 16-bit LoRA base is frozen, but the evidence modules are trained in full: fp32, as peft
        # keeps the adapters (DeepSpeed keeps its own fp32 master copy of every trained parameter).
        evidence.modules.float()
    model.train()
    model = _freeze(model, family, cfg)

    config_path = folder / RUN_CONFIG_FILE
    previous_config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    found = checkpoints(folder) if cfg.resume else []
    complete = [path for _, path, ok in found if ok]
    checkpoint = str(complete[-1]) if complete else None
    resumes = list(previous_config.get("resumes", []))
    run_provenance = provenance()
    if state == "unfinished":
        torn = [path.name for _, path, ok in found if not ok]
        resumes.append(
            {
                "from_checkpoint": Path(checkpoint).name if checkpoint else None,
                "skipped_torn_checkpoints": torn,
                "learning_rate": cfg.learning_rate,
                "previous_learning_rate": previous_config.get("identity", {}).get("learning_rate"),
                "at": run_provenance["created"],
            }
        )
        for name in torn:
            log.warning("%s/%s is incomplete (the run was stopped while writing it): skipped, it will be rewritten", folder, name)
    run_config = {
        "format": RUN_FORMAT,
        "model": {
            "name": cfg.model,
            "display_name": loaded.display_name,
            "family": family.name,
            "path": str(Path(loaded.resolved.path).resolve()) if loaded.resolved.path else None,
            "source": loaded.resolved.source,
        },
        "variant": {"name": preset.name, "label": preset.label, "table": preset.table},
        "evidence": cfg.to_dict()["evidence"],
        "train": cfg.to_dict(),
        "identity": _identity(cfg),
        "precision": precision,
        "weights_dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "saved_dtype": loaded.checkpoint_dtype,
        "image_size": pixel_budget,
        "data": {
            "train": str(Path(cfg.data).resolve()),
            "train_sha256": sha256_file(cfg.data),
            "images": str(Path(cfg.images).resolve()),
            "n_samples": len(dataset),
        },
        "parameters": {
            "total": sum(p.numel() for p in model.parameters()),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "evidence": sum(p.numel() for p in evidence.modules.parameters()) if evidence else 0,
        },
        **run_provenance,
    }
    if previous_config.get("created"):
        run_config["created"] = previous_config["created"]
    if resumes:
        run_config["resumes"] = resumes
    if _is_main_process():
        write_json_atomic(config_path, run_config)

    pad_id = processor.tokenizer.pad_token_id
    if pad_id is None:
        pad_id = processor.tokenizer.eos_token_id
    trainer = EvidenceTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=Collator(pad_id, with_image_ids=evidence_cfg.lambda_ctr > 0),
        processing_class=processor,
        callbacks=[JsonlLogCallback(folder / TRAIN_LOG_FILE)],
        evidence=evidence,
        evidence_cfg=evidence_cfg,
        final_dtype=getattr(torch, loaded.checkpoint_dtype),
    )
    if not progress:
        from transformers.trainer_callback import ProgressCallback

        trainer.remove_callback(ProgressCallback)
    if checkpoint is not None:
        trainer.load_contrastive_queue(checkpoint)
    output = trainer.train(resume_from_checkpoint=checkpoint)

    if cfg.lora_rank:
        trained = _save_merged(trainer, folder, processor, getattr(torch, loaded.checkpoint_dtype))
    else:
        trainer.save_model(str(folder))
        trained = trainer.accelerator.unwrap_model(trainer.model)
    summary = {
        "finished": True,
        "global_step": output.global_step,
        "train_loss": trainer.whole_run_loss(output),
        "metrics": output.metrics,
        "resumed_from": checkpoint,
        "last_log": _last_log(folder / TRAIN_LOG_FILE),
        "peak_host_rss_gb": _peak_rss_per_rank(),
    }
    if _is_main_process():
        write_json_atomic(folder / SUMMARY_FILE, summary)
    return TrainResult(folder, "trained", summary, trained)


def _load_dtype(cfg: TrainConfig, precision: str) -> str:
    """The dtype the weights are loaded in for training.

    bf16 (the published checkpoints' own dtype, half the host memory of fp32) where no update is
    applied to bf16 weights: under DeepSpeed (its optimizer keeps fp32 master weights) and for LoRA
    (the base weights are frozen; peft keeps the adapters in fp32). Plain full fine-tuning keeps
    fp32 weights with bf16 autocast: AdamW updates at lr 1e-5 are below bf16's resolution (2^-8
    relative) and would be lost.
    """
    if precision in ("bf16", "fp16") and (cfg.deepspeed or cfg.lora_rank):
        return "bfloat16" if precision == "bf16" else "float16"
    return "float32"


def _peak_rss_per_rank() -> list[float]:
    """Peak resident host memory (GB) of every rank, in rank order (this process alone without torch.distributed)."""
    import resource

    import torch

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux reports KiB
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        gathered: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, peak)
        return [round(float(v), 3) for v in gathered]
    return [round(peak, 3)]


def _save_merged(trainer: Any, folder: Path, processor: Any, dtype: Any) -> Any:
    """LoRA: merge the adapters into the weights so that the run folder is a plain model + evidence."""
    from hallbench.train.trainer import cast_state_dict, save_evidence, split_evidence_state

    merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
    if trainer.args.should_save:
        own, evidence_state = split_evidence_state(merged.state_dict())
        own = cast_state_dict(own, dtype)
        merged.save_pretrained(str(folder), state_dict=own)
        processor.save_pretrained(str(folder))
        if evidence_state:
            save_evidence(evidence_state, folder)
    return merged


def _last_log(path: Path) -> dict | None:
    from hallbench.train.trainer import read_log

    records = read_log(path)
    return records[-1] if records else None


def expand_models(text: str) -> list[str]:
    """``qwen2b``, ``tiny-qwen,tiny-ministral``, ``all`` (the paper's three) -> model names in order."""
    names: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        for name in PAPER_MODELS if part.lower() == "all" else (part,):
            if name and name not in names:
                names.append(name)
    if not names:
        raise HallbenchError("--model is empty")
    return names


def parse_seeds(text: str, option: str = "--seeds") -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]`` (order kept, repeats dropped); anything but non-negative integers is an error."""
    seeds: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if not part.isdigit():
            raise HallbenchError(f"{option} {text!r}: expected a comma list of non-negative integers such as 0,1,2, found {part!r}")
        if int(part) not in seeds:
            seeds.append(int(part))
    if not seeds:
        raise HallbenchError(f"{option} is empty; give seeds such as 0,1,2")
    return seeds


def run_matrix(
    cfg: TrainConfig,
    models: list[str],
    variants: list[str],
    *,
    seeds: list[int] | None = None,
    progress: bool = True,
    on_result: Any = None,
) -> list[TrainResult]:
    """Every model x variant x seed in sequence (seed outermost, so that a first complete seed of the
    whole table comes first); finished runs are skipped, unfinished ones resumed.

    ``seeds`` (``--seeds 0,1,2``): one run per seed, in folders named ``..._seed<N>``; without it,
    one run with ``cfg.seed`` in the folder the seed's scripts name.
    """
    if seeds is not None and not seeds:
        raise HallbenchError("--seeds is empty")
    n_runs = len(models) * len(variants) * len(seeds or [cfg.seed])
    if cfg.output_dir is not None and n_runs > 1:
        raise HallbenchError("--output-dir names one run folder; with several models, variants or seeds use --output-root")
    several = n_runs > 1
    per_seed = [replace(cfg, seed=s, seed_in_folder=True) for s in seeds] if seeds is not None else [cfg]
    # Every config is built (and so validated) before the first run starts.
    configs = [replace(c, model=m, variant=v, resume=cfg.resume or several) for c in per_seed for m in models for v in variants]
    results = []
    for one in configs:
        result = run_train(one, progress=progress)
        results.append(result)
        if on_result is not None:
            on_result(result)
    _release_process_group()
    return results


def _release_process_group() -> None:
    """End the distributed launch's process group (DDP, DeepSpeed) once every run is done: left to the
    interpreter's exit, gloo's threads are destroyed unjoined and a rank can abort ("terminate called
    without an active exception") after its run has finished and saved."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
