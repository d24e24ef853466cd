"""``EvidenceTrainer``: the Hugging Face Trainer with the method's loss, logging and saving.

It overrides only what it must:
- ``compute_loss``: token-level CE on the answers + lambda_orth * L_orth + lambda_ctr * L_ctr; a
  non-finite total stops the run before the backward pass (so no weight is touched by it) with the
  step and every term in the message;
- ``log``: adds the window means of ``ce``, ``l_orth`` and ``l_ctr`` to the Trainer's own logs;
- ``_save`` / ``_load_from_checkpoint``: the evidence modules live in ``evidence.safetensors`` beside
  the model, whose own weights file stays loadable by plain ``from_pretrained``;
- ``_get_grad_norm`` / ``_maybe_log_save_evaluate``: a non-finite gradient norm stops the run before
  the optimizer step (so no weight becomes NaN) and, under DeepSpeed where the norm is known only
  after the step, before any save (so no checkpoint holds NaN weights);
- ``_save_checkpoint``: a checkpoint is complete only once ``hallbench_checkpoint.json`` (file sizes,
  loss sum) is written, last, after every rank finished; :func:`last_complete_checkpoint` is what
  ``--resume`` continues from, and rotation (``save_total_limit``) keeps complete checkpoints only;
- ``_load_optimizer_and_scheduler``: the learning rate given on resume is the one used from then on
  (the saved scheduler would otherwise restore the old one).

The CE of an optimizer step is the mean over **every answer token of the step**: all its
gradient-accumulation micro-batches and, under DDP/DeepSpeed, all ranks (the Trainer counts them,
``num_items_in_batch``, because ``model_accepts_loss_kwargs`` is set). So batch 4 x accumulation 1,
batch 1 x accumulation 4 and 2 ranks x batch 2 train on the same loss (tested), whatever the
samples' lengths; a per-micro-batch mean divided by the accumulation steps would weight a short
answer's tokens more than a long one's. L_orth (a mean over a micro-batch's text tokens) and L_ctr
(in-batch negatives) are per-micro-batch terms by their nature: averaged over the micro-batches
(``/ accumulation``) and over the ranks (DDP), so they do depend on the micro-batch size.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from hallbench.errors import HallbenchError
from hallbench.runfolder import read_appended_jsonl, write_json_atomic, write_text_atomic
from hallbench.train.data import IGNORE_INDEX
from hallbench.train.evidence import ContrastiveLoss, EvidenceConfig, EvidenceModel, orthogonality_loss

EVIDENCE_FILE = "evidence.safetensors"
TRAIN_LOG_FILE = "train_log.jsonl"
_EVIDENCE_KEY = re.compile(r"(?:^|\.)evidence\.(.+)$")


CHECKPOINT_MARKER = "hallbench_checkpoint.json"
"""Written last into ``checkpoint-N``: without it (or with a file of another size) the checkpoint is torn."""
_CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")


class NonFiniteLossError(HallbenchError):
    """The loss or the gradient became NaN or infinite; the run stopped before applying it."""


def _checkpoint_files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file() and p.name != CHECKPOINT_MARKER}


def checkpoint_is_complete(folder: Path) -> bool:
    """Whether ``checkpoint-N`` has its marker and every file the marker lists, at its recorded size."""
    try:
        marker = json.loads((Path(folder) / CHECKPOINT_MARKER).read_text(encoding="utf-8"))
        files = marker["files"]
        return all((Path(folder) / name).stat().st_size == size for name, size in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def checkpoints(folder: Path) -> list[tuple[int, Path, bool]]:
    """``(step, path, complete)`` of every ``checkpoint-N`` folder of a run, by step."""
    found = []
    for path in Path(folder).iterdir() if Path(folder).is_dir() else []:
        match = _CHECKPOINT_DIR.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path, checkpoint_is_complete(path)))
    return sorted(found)


def last_complete_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint of a run (``--resume`` continues from it; torn ones are skipped)."""
    complete = [path for _, path, ok in checkpoints(folder) if ok]
    return complete[-1] if complete else None


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Unreduced next-token CE (B, T-1); 0 where the target is ``IGNORE_INDEX``."""
    shifted = logits[:, :-1].float()
    targets = labels[:, 1:]
    return torch.nn.functional.cross_entropy(
        shifted.reshape(-1, shifted.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    ).view(targets.shape)


def split_evidence_state(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(the model's own weights, the evidence modules' weights keyed as in ``model.evidence``)."""
    own, evidence = {}, {}
    for key, value in state_dict.items():
        match = _EVIDENCE_KEY.search(key)
        if match:
            evidence[match.group(1)] = value
        else:
            own[key] = value
    return own, evidence


def cast_state_dict(state_dict: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Floating tensors cast to ``dtype``; tensors that share storage (tied embeddings) still share it,
    so that ``save_pretrained`` keeps writing them once."""
    cast: dict[tuple, torch.Tensor] = {}
    out = {}
    for key, value in state_dict.items():
        if not value.is_floating_point() or value.dtype == dtype:
            out[key] = value
            continue
        identity = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape), tuple(value.stride()))
        if identity not in cast:
            cast[identity] = value.to(dtype)
        out[key] = cast[identity]
    return out


def save_evidence(evidence_state: dict[str, torch.Tensor], folder: Path) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in evidence_state.items()}
    save_file(tensors, str(Path(folder) / EVIDENCE_FILE), metadata={"format": "pt", "hallbench": "evidence-modules"})


def load_evidence(evidence: EvidenceModel, folder: Path) -> None:
    """Load ``evidence.safetensors`` into the attached modules; every key must match exactly."""
    from safetensors.torch import load_file

    path = Path(folder) / EVIDENCE_FILE
    if not path.is_file():
        raise HallbenchError(f"{path} is missing: the run's evidence modules cannot be restored")
    state = load_file(str(path))
    reference = next(evidence.modules.parameters())
    result = evidence.modules.load_state_dict({k: v.to(reference.dtype) for k, v in state.items()}, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise HallbenchError(
            f"{path} does not match the run's evidence settings: missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
        )


class EvidenceTrainer(Trainer):
    def __init__(self, *args: Any, evidence: EvidenceModel | None, evidence_cfg: EvidenceConfig, final_dtype: Any = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.final_dtype = final_dtype
        """dtype of the final weights in the run folder (the base checkpoint's); checkpoints keep the training dtype for exact resume."""
        # The Trainer then counts the step's answer tokens (num_items_in_batch) and does not divide the
        # loss by the accumulation steps: compute_loss normalises by that count itself.
        self.model_accepts_loss_kwargs = True
        self.loss_is_scaled_for_ga = True
        if self.args.n_gpu > 1:
            # nn.DataParallel (several GPUs, no launcher): the Trainer's count is per replica, so the
            # step's CE falls back to the micro-batch mean divided by the accumulation steps.
            self.model_accepts_loss_kwargs = False
        self.evidence = evidence
        self.evidence_cfg = evidence_cfg
        self.contrastive = ContrastiveLoss(evidence_cfg.tau, evidence_cfg.ctr_queue) if evidence_cfg.lambda_ctr else None
        self._sums: dict[str, torch.Tensor] = {}
        self._micro_batches = 0
        self._steps = 0.0
        self.loss_sum_before_resume = 0.0
        """Sum of the per-step losses of the steps before the checkpoint this run resumed from."""

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None) -> Any:
        labels = inputs.pop("labels")
        image_ids = inputs.pop("image_ids", None)
        cfg = self.evidence_cfg
        needs_aux = self.evidence is not None and (cfg.lambda_orth > 0 or cfg.lambda_ctr > 0)
        if self.evidence is not None:
            self.evidence.state.collect_aux = needs_aux
        outputs = model(**inputs)
        token_sum = token_cross_entropy(outputs.logits, labels).sum()
        n_tokens = (labels[:, 1:] != IGNORE_INDEX).sum()
        ce = token_sum / n_tokens.clamp(min=1)
        accumulation = max(1, int(getattr(self, "current_gradient_accumulation_steps", 1) or 1))
        ce_step = self._step_share(token_sum, ce, num_items_in_batch, accumulation)
        terms = {"ce": ce}
        # What this micro-batch adds to the step's loss: the step's token-mean CE is the sum of the
        # micro-batches' ce_step; the per-micro-batch terms are averaged over the accumulation steps.
        total = ce_step
        if needs_aux:
            assert self.evidence is not None
            state = self.evidence.state
            if cfg.lambda_orth > 0:
                terms["l_orth"] = orthogonality_loss(state.aux)
                total = total + cfg.lambda_orth * terms["l_orth"] / accumulation
            if cfg.lambda_ctr > 0:
                assert self.contrastive is not None
                if image_ids is None:
                    raise HallbenchError(
                        "L_ctr needs the samples' image ids: build the collator with Collator(pad_id, with_image_ids=True)"
                    )
                terms["l_ctr"] = self.contrastive(self.evidence, labels != IGNORE_INDEX, image_ids)
                total = total + cfg.lambda_ctr * terms["l_ctr"] / accumulation
            state.aux = {}  # the aux tensors are in the graph already; drop the extra references
        if not torch.isfinite(total):
            values = ", ".join(f"{name}={float(value):.6g}" for name, value in terms.items())
            raise NonFiniteLossError(
                f"the loss became non-finite at step {self.state.global_step + 1} (epoch {self.state.epoch or 0:.3f}): "
                f"total={float(total):.6g}, {values}; stopped before the update. "
                f"Checkpoints saved before it in {self.args.output_dir} are intact; lower the learning rate or the lambdas and resume."
            )
        # Logged: ce as the mean over the window's steps of each step's token mean (the sum of its
        # micro-batches' ce_step); l_orth and l_ctr as the mean over its micro-batches.
        for name, value in {**terms, "ce": ce_step}.items():
            self._sums[name] = self._sums.get(name, torch.zeros((), device=value.device)) + value.detach().float()
        self._micro_batches += 1
        self._steps += 1 / accumulation
        return (total, outputs) if return_outputs else total

    def _step_share(self, token_sum: torch.Tensor, micro_mean: torch.Tensor, num_items_in_batch: Any, accumulation: int) -> torch.Tensor:
        """This micro-batch's share of the step's token-mean CE: its token sum over the step's answer
        tokens, times the ranks when that count is over all ranks (DDP averages the ranks' gradients).
        Without a count (the Trainer gives none outside training) the micro-batch mean over the steps."""
        if num_items_in_batch is None:
            return micro_mean / accumulation
        count = torch.as_tensor(num_items_in_batch, device=token_sum.device)
        ranks = self.accelerator.num_processes if self.args.average_tokens_across_devices and self.args.world_size > 1 else 1
        return token_sum / count.clamp(min=1) * ranks

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._micro_batches:
            for name in ("ce", "l_orth", "l_ctr"):
                if name in self._sums:
                    mean = self._sums[name] / (self._steps if name == "ce" else self._micro_batches)
                    logs[name] = float(self.accelerator.reduce(mean, reduction="mean"))
                else:
                    logs[name] = None
            self._sums, self._micro_batches, self._steps = {}, 0, 0.0
        super().log(logs, start_time)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        # The final save writes the model's own weights in the base checkpoint's dtype (a bf16
        # checkpoint gives a bf16 run folder); checkpoint-N folders keep the training dtype, so that
        # a resumed run continues from exactly the weights it stopped with.
        final = Path(output_dir).resolve() == Path(self.args.output_dir).resolve()
        cast = final and self.final_dtype is not None
        if self.evidence is None and not cast:
            return super()._save(output_dir, state_dict)
        if state_dict is None:
            state_dict = self.accelerator.unwrap_model(self.model).state_dict()
        own, evidence_state = split_evidence_state(state_dict)
        if cast:
            own = cast_state_dict(own, self.final_dtype)
        super()._save(output_dir, own)
        if self.args.should_save and evidence_state:
            save_evidence(evidence_state, Path(output_dir))

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        import shutil

        folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
        if self.args.should_save and folder.exists():
            # Only a torn one can be here (resume starts after the last complete checkpoint): start clean.
            shutil.rmtree(folder)
        self.accelerator.wait_for_everyone()
        # Rotation waits until this checkpoint is complete, and then counts complete ones only.
        limit, self.args.save_total_limit = self.args.save_total_limit, None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        if self.contrastive is not None and self.contrastive.queue:
            # The L_ctr negatives queue is training state like the optimizer's: without it a resumed
            # run would see other negatives than the uninterrupted one. One file per rank (own batches).
            from safetensors.torch import save_file

            queue = {str(k): v.detach().to("cpu").contiguous() for k, v in self.contrastive.queue.items()}
            if self.contrastive.queue_ids is not None:
                queue["image_ids"] = self.contrastive.queue_ids.contiguous()
            save_file(queue, str(folder / f"ctr_queue.rank{self.args.process_index}.safetensors"))
        # The loss of the steps since the last log (a collective: every rank saves). A resumed run adds it back.
        unlogged = float(self.accelerator.reduce(self._tr_loss.detach().clone(), reduction="mean"))
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            marker = {
                "step": self.state.global_step,
                "loss_sum": self.loss_sum_before_resume + self._total_loss_scalar + unlogged,
                "files": _checkpoint_files(folder),
            }
            write_json_atomic(folder / CHECKPOINT_MARKER, marker)
            self._rotate_complete_checkpoints(limit)
        self.accelerator.wait_for_everyone()

    def _rotate_complete_checkpoints(self, limit: int | None) -> None:
        import shutil

        found = checkpoints(Path(self.args.output_dir))
        complete = [path for _, path, ok in found if ok]
        newest_step = max((step for step, _, ok in found if ok), default=None)
        for step, path, ok in found:
            torn_and_older = not ok and newest_step is not None and step < newest_step
            if torn_and_older or (ok and limit and path in complete[:-limit]):
                shutil.rmtree(path, ignore_errors=True)

    def _get_grad_norm(self, model: Any, grad_norm: Any = None) -> Any:
        norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        self._check_grad_norm(norm, "before the update: no weight was changed by it")
        return norm

    def _maybe_log_save_evaluate(self, tr_loss: Any, grad_norm: Any, *args: Any, **kwargs: Any) -> None:
        # DeepSpeed computes the norm inside its step; this check still comes before any save.
        self._check_grad_norm(grad_norm, "before saving: no checkpoint holds the update")
        super()._maybe_log_save_evaluate(tr_loss, grad_norm, *args, **kwargs)

    def _check_grad_norm(self, norm: Any, when: str) -> None:
        if norm is None:
            return
        value = float(norm.item() if hasattr(norm, "item") else norm)
        if math.isfinite(value):
            return
        last = last_complete_checkpoint(Path(self.args.output_dir))
        where = f"the last complete checkpoint is {last}" if last else "no checkpoint was saved yet"
        raise NonFiniteLossError(
            f"the gradient norm became {value} at step {self.state.global_step + 1} (epoch {self.state.epoch or 0:.3f}); "
            f"stopped {when}; {where}. Lower --learning-rate (or the lambdas, or set max_grad_norm) and run again with --resume."
        )

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        marker = Path(checkpoint) / CHECKPOINT_MARKER
        if marker.is_file():
            self.loss_sum_before_resume = float(json.loads(marker.read_text(encoding="utf-8")).get("loss_sum", 0.0))
        # The restored scheduler carries the learning rate of the interrupted run; a resume may lower it.
        base_lrs = getattr(self.lr_scheduler, "base_lrs", None)
        if base_lrs and base_lrs[0] and not math.isclose(base_lrs[0], self.args.learning_rate, rel_tol=1e-12):
            ratio = self.args.learning_rate / base_lrs[0]
            self.lr_scheduler.base_lrs = [lr * ratio for lr in base_lrs]
            for group in self.optimizer.param_groups:
                group["lr"] *= ratio
                if "initial_lr" in group:
                    group["initial_lr"] *= ratio
            if hasattr(self.lr_scheduler, "_last_lr"):
                self.lr_scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def whole_run_loss(self, output: Any) -> float:
        """Mean training loss over every step of the run, the steps before a resume included
        (``TrainOutput.training_loss`` covers this ``train()`` call only)."""
        steps = output.global_step
        this_call = output.training_loss * (steps - self._initial_global_step)
        return (self.loss_sum_before_resume + this_call) / max(steps, 1)

    def load_contrastive_queue(self, checkpoint: str | Path) -> None:
        """Restore the L_ctr queue saved with ``checkpoint`` (called before ``train(resume_from_checkpoint=...)``)."""
        path = Path(checkpoint) / f"ctr_queue.rank{self.args.process_index}.safetensors"
        if self.contrastive is None or not path.is_file():
            return
        from safetensors.torch import load_file

        state = load_file(str(path))
        ids = state.pop("image_ids", None)
        self.contrastive.queue = {int(k): v for k, v in state.items()}
        if ids is None and self.contrastive.queue:
            # A checkpoint from before image ids were stored: its queued images are unknown, never masked.
            ids = torch.full((len(next(iter(self.contrastive.queue.values()))),), -1, dtype=torch.long)
        self.contrastive.queue_ids = ids

    def _issue_warnings_after_load(self, load_result: Any) -> None:
        # The evidence keys are absent from model.safetensors by design (they are loaded next, from
        # evidence.safetensors, strictly): not worth a warning.
        missing = [k for k in load_result.missing_keys if not _EVIDENCE_KEY.search(k)]
        super()._issue_warnings_after_load(load_result._replace(missing_keys=missing) if hasattr(load_result, "_replace") else load_result)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if self.evidence is not None:
            load_evidence(self.evidence, Path(resume_from_checkpoint))


def read_log(path: Path) -> list[dict]:
    """The records of ``train_log.jsonl`` (a last line torn by a crash is dropped)."""
    return read_appended_jsonl(path, "training log record")


class JsonlLogCallback(TrainerCallback):
    """Appends every training log (step, epoch, loss, ce, l_orth, l_ctr, lr, grad norm) to ``train_log.jsonl``.

    On resume, lines after the checkpoint's step are dropped first: they will be logged again, and
    one step must appear once.
    """

    KEYS = ("loss", "ce", "l_orth", "l_ctr", "learning_rate", "grad_norm")

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not self.path.is_file():
            return
        kept = [json.dumps(r) for r in read_log(self.path) if r.get("step", 0) <= state.global_step]
        write_text_atomic(self.path, "".join(k + "\n" for k in kept))

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs or "loss" not in logs:
            return
        record = {"step": state.global_step, "epoch": logs.get("epoch", state.epoch)}
        record.update({k: logs.get(k) for k in self.KEYS})
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
