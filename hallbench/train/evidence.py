"""Evidence injection: visual memory retrieval injected into the decoder's residual stream.

See ``docs/method.md`` for the formulas. One implementation for every family: it hooks the decoder
layers given by the family adapter and reads the visual tokens from the language model's input
embeddings (the merged visual embeddings that replaced the image placeholder tokens).

Invariants:
- At initialisation the injected model's logits equal the base model's exactly: every injector has
  exactly one zero-initialised element on its output path (the ``concat`` projection, the aligned
  up-projection, or the scale of a candidate source), so the added term is exactly zero.
- No parameter is stuck: exactly one element is zero, so its gradient at step 0 is non-zero (the
  other factors are non-zero), and after the first update every other parameter sees a non-zero
  gradient. (A zero gate times a zero projection would keep both at zero forever.)
- Evidence is added at text positions only: never at padding, and never at any vision token (the
  image placeholders and the markers around or between them, e.g. Qwen3-VL's ``<|vision_start|>`` /
  ``<|vision_end|>``, Pixtral's ``[IMG_BREAK]`` / ``[IMG_END]``: ``Family.vision_special_tokens``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hallbench.train.method import EvidenceConfig

__all__ = ["EvidenceConfig", "attach_evidence", "ContrastiveLoss", "info_nce", "orthogonality_loss"]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


class EvidenceInjector(nn.Module):
    """Retrieval + source + operator for one injection point."""

    def __init__(self, hidden: int, cfg: EvidenceConfig):
        super().__init__()
        self.cfg = cfg
        d_e = cfg.evidence_dim
        self.norm = RMSNorm(hidden)
        self.q_proj = nn.Linear(hidden, d_e, bias=False)
        self.k_proj = nn.Linear(hidden, d_e, bias=False)
        std = 1.0 / math.sqrt(hidden)
        nn.init.normal_(self.q_proj.weight, std=std)
        nn.init.normal_(self.k_proj.weight, std=std)
        # The one zero-initialised element on the output path (see the module docstring).
        zero_here = "concat" if cfg.inject_op == "concat" else ("align" if cfg.evidence_source == "aligned" else "scale")
        if cfg.evidence_source == "aligned":
            self.align_down = nn.Linear(hidden, d_e, bias=False)
            self.align_up = nn.Linear(d_e, hidden, bias=False)
            nn.init.normal_(self.align_down.weight, std=std)
            if zero_here == "align":
                nn.init.zeros_(self.align_up.weight)
            else:
                nn.init.normal_(self.align_up.weight, std=1.0 / math.sqrt(d_e))
        if cfg.inject_op == "concat":
            self.concat_proj = nn.Linear(2 * hidden, hidden, bias=False)
            nn.init.zeros_(self.concat_proj.weight)
        else:
            # Shape (1,), not a 0-dim tensor: DeepSpeed broadcasts parameters as byte views, which 0-dim tensors refuse.
            self.scale = nn.Parameter(torch.full((1,), 0.0 if zero_here == "scale" else 1.0))
        if cfg.inject_op == "ours" and cfg.use_utilization:
            self.gate = nn.Linear(2 * hidden, 1)
            nn.init.normal_(self.gate.weight, std=std)
            nn.init.zeros_(self.gate.bias)

    def retrieve(
        self, h: torch.Tensor, visual: torch.Tensor, visual_mask: torch.Tensor, normed: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries ``q`` (B, T, d_e) and the candidate ``c`` (B, T, d): attention of each position over its sample's visual tokens."""
        q = self.q_proj(self.norm(h) if normed is None else normed)
        k = self.k_proj(visual)
        scores = torch.einsum("btd,bnd->btn", q, k) / math.sqrt(self.cfg.evidence_dim)
        scores = scores.masked_fill(~visual_mask[:, None, :], torch.finfo(scores.dtype).min)
        if self.cfg.evidence_topk and self.cfg.evidence_topk < scores.shape[-1]:
            kth = scores.topk(self.cfg.evidence_topk, dim=-1).values[..., -1:]
            scores = scores.masked_fill(scores < kth, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores.float(), dim=-1).to(visual.dtype)
        # A sample with no visual token retrieves nothing (all-masked rows would be uniform otherwise).
        weights = weights * visual_mask.any(-1)[:, None, None].to(weights.dtype)
        return q, torch.einsum("btn,bnd->btd", weights, visual)

    def forward(
        self, h: torch.Tensor, visual: torch.Tensor, visual_mask: torch.Tensor, text_mask: torch.Tensor
    ) -> tuple[torch.Tensor, dict]:
        # The modules compute in their own dtype: fp32 evidence beside a bf16 LoRA base keeps its
        # AdamW updates (hallbench.train.run); the residual stream keeps the model's dtype.
        residual = h
        h, visual = h.to(self.q_proj.weight.dtype), visual.to(self.q_proj.weight.dtype)
        normed = self.norm(h)  # shared by the query and the gate
        q, c = self.retrieve(h, visual, visual_mask, normed)
        e = self.align_up(self.align_down(c)) if self.cfg.evidence_source == "aligned" else c
        u = None
        if self.cfg.inject_op == "concat":
            delta = self.concat_proj(torch.cat([h, e], dim=-1))
        elif self.cfg.inject_op == "ours" and self.cfg.use_utilization:
            u = torch.sigmoid(self.gate(torch.cat([normed, e], dim=-1)))
            delta = self.scale * u * e
        else:
            delta = self.scale * e
        delta = delta * text_mask[..., None].to(delta.dtype)
        return residual + delta.to(residual.dtype), {"h": h, "e": e, "u": u, "q": q}


class EvidenceState:
    """Per-forward data shared by the hooks: the visual memory of each sample and the aux tensors.

    The visual memory is captured when the language model receives the prompt (its input holds the
    image tokens) and kept for the decoding steps of ``generate``, whose inputs are new text tokens.
    """

    def __init__(self) -> None:
        self.visual: torch.Tensor | None = None
        self.visual_mask: torch.Tensor | None = None
        self.text_mask: torch.Tensor | None = None
        self.aux: dict[int, dict] = {}
        self.collect_aux = False
        self.input_ids: torch.Tensor | None = None
        self.attention_mask: torch.Tensor | None = None


@dataclass
class EvidenceModel:
    """The evidence modules attached to a model, with their hooks (``detach()`` removes them)."""

    modules: nn.ModuleDict
    cfg: EvidenceConfig
    state: EvidenceState
    aux_layers: list[int]
    handles: list[Any] = field(default_factory=list)

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def attach_evidence(model: Any, family: Any, cfg: EvidenceConfig, processor: Any) -> EvidenceModel | None:
    """Create the evidence modules for ``model`` and hook them in; ``None`` when evidence is off.

    ``processor`` gives the vision token ids (``family.memory_tokens``: the positions whose input
    embeddings form the visual memory V; ``family.vision_special_tokens``: every position that is
    never injected).

    The modules are registered on the model as ``model.evidence`` so that the optimizer, DeepSpeed,
    ``.to()`` and ``state_dict`` see them like any other parameter.
    """
    if not cfg.enable_evidence:
        return None
    language_model = family.language_model(model)
    layers = family.decoder_layers(model)
    hidden = language_model.config.hidden_size
    injected = cfg.injected_layers(len(layers))
    reference = next(language_model.parameters())
    modules = nn.ModuleDict({str(i): EvidenceInjector(hidden, cfg) for i in injected}).to(device=reference.device, dtype=reference.dtype)
    model.evidence = modules
    state = EvidenceState()
    evidence = EvidenceModel(modules, cfg, state, cfg.aux_layer_set(len(layers)))
    memory_ids = torch.tensor(family.token_ids(processor, family.memory_tokens))
    vision_ids = torch.tensor(family.token_ids(processor, family.vision_special_tokens))

    def capture_ids(module: Any, args: tuple, kwargs: dict) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        state.input_ids = input_ids
        state.attention_mask = kwargs.get("attention_mask")

    def capture_visual(module: Any, args: tuple, kwargs: dict) -> None:
        embeds = kwargs.get("inputs_embeds")
        input_ids = state.input_ids
        if embeds is None or input_ids is None or input_ids.shape != embeds.shape[:2]:
            return
        is_visual = torch.isin(input_ids, memory_ids.to(input_ids.device))
        is_vision_token = torch.isin(input_ids, vision_ids.to(input_ids.device))
        mask = (
            state.attention_mask.bool()
            if state.attention_mask is not None and state.attention_mask.shape == input_ids.shape
            else torch.ones_like(is_visual)
        )
        if is_visual.any():  # the prompt: (re)build the visual memory
            # Sample b's k-th visual token goes to visual[b, k]; one scatter for the whole batch.
            counts = is_visual.sum(-1)
            n = int(counts.max())
            rows, _ = is_visual.nonzero(as_tuple=True)
            slots = (is_visual.cumsum(-1) - 1)[is_visual]
            visual = embeds.new_zeros(embeds.shape[0], n, embeds.shape[-1])
            visual = visual.index_put((rows, slots), embeds[is_visual])
            visual_mask = torch.arange(n, device=embeds.device)[None, :] < counts[:, None]
            state.visual, state.visual_mask = visual, visual_mask
        state.text_mask = mask & ~is_vision_token
        state.aux = {}

    def make_layer_hook(index: int):
        injector = modules[str(index)]

        def hook(module: Any, args: tuple, kwargs: dict):
            if state.visual is None:
                return None
            h = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            text_mask = (
                state.text_mask
                if state.text_mask is not None and state.text_mask.shape == h.shape[:2]
                else torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)
            )
            new_h, aux = injector(h, state.visual.to(h.dtype), state.visual_mask, text_mask)
            if state.collect_aux and index in evidence.aux_layers:
                state.aux[index] = {**aux, "text_mask": text_mask}
            if "hidden_states" in kwargs:
                kwargs["hidden_states"] = new_h
                return args, kwargs
            return (new_h, *args[1:]), kwargs

        return hook

    evidence.handles.append(model.register_forward_pre_hook(capture_ids, with_kwargs=True))
    evidence.handles.append(language_model.register_forward_pre_hook(capture_visual, with_kwargs=True))
    for index in injected:
        evidence.handles.append(layers[index].register_forward_pre_hook(make_layer_hook(index), with_kwargs=True))
    return evidence


# ---------------------------------------------------------------------------------------------
# Regularisers


def orthogonality_loss(aux: dict[int, dict]) -> torch.Tensor:
    """L_orth: mean over aux layers and text tokens of cos^2(e_l, h_l)."""
    per_layer = []
    for tensors in aux.values():
        mask = tensors["text_mask"]
        cos = nn.functional.cosine_similarity(tensors["e"].float(), tensors["h"].float(), dim=-1, eps=1e-8)
        per_layer.append((cos.pow(2) * mask).sum() / mask.sum().clamp(min=1))
    return torch.stack(per_layer).mean() if per_layer else torch.zeros(())


def info_nce(
    queries: torch.Tensor,
    keys: torch.Tensor,
    tau: float,
    extra_negatives: torch.Tensor | None = None,
    image_ids: torch.Tensor | None = None,
    extra_image_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE with cosine similarity: row i's positive is key i; the other keys and ``extra_negatives`` are negatives.

    With ``image_ids`` (one per row, and ``extra_image_ids`` per extra negative), a negative that
    shows row i's own image (another conversation about it in the batch, or a recent one in the
    queue) is masked out: an image must not be pushed away from itself.
    """
    q = nn.functional.normalize(queries.float(), dim=-1)
    k = nn.functional.normalize(keys.float(), dim=-1)
    logits = q @ k.T
    same = None
    if image_ids is not None:
        same = image_ids[:, None] == image_ids[None, :]
        same.fill_diagonal_(False)  # the positive itself stays
    if extra_negatives is not None and extra_negatives.numel():
        logits = torch.cat([logits, q @ nn.functional.normalize(extra_negatives.float(), dim=-1).T], dim=1)
        if same is not None:
            assert extra_image_ids is not None, "queue negatives need their image ids"
            same = torch.cat([same, image_ids[:, None] == extra_image_ids[None, :]], dim=1)
    if same is not None:
        logits = logits.masked_fill(same, float("-inf"))
    return nn.functional.cross_entropy(logits / tau, torch.arange(q.shape[0], device=q.device))


class ContrastiveLoss:
    """L_ctr with a FIFO queue of recent images' pooled keys, so that it also works at batch size 1.

    The queue stores each key's image id beside it, so that the same-image mask of :func:`info_nce`
    also covers queued negatives.
    """

    def __init__(self, tau: float, queue_size: int):
        self.tau, self.queue_size = tau, queue_size
        self.queue: dict[int, torch.Tensor] = {}
        self.queue_ids: torch.Tensor | None = None
        """Image ids of the queued keys (the same for every layer's queue: one push per step)."""

    def __call__(self, evidence: EvidenceModel, answer_mask: torch.Tensor, image_ids: torch.Tensor) -> torch.Tensor:
        state = evidence.state
        assert state.visual is not None and state.visual_mask is not None
        visual_mask = state.visual_mask[..., None].to(state.visual.dtype)
        pooled_visual = (state.visual * visual_mask).sum(1) / visual_mask.sum(1).clamp(min=1)
        image_ids = image_ids.to(pooled_visual.device)
        losses = []
        queued_ids = self.queue_ids.to(image_ids.device) if self.queue_ids is not None else None
        for index, tensors in state.aux.items():
            injector = evidence.modules[str(index)]
            weights = answer_mask[..., None].to(tensors["q"].dtype)
            pooled_q = (tensors["q"] * weights).sum(1) / weights.sum(1).clamp(min=1)
            keys = injector.k_proj(pooled_visual.to(injector.k_proj.weight.dtype))
            negatives = self.queue.get(index)
            losses.append(info_nce(pooled_q, keys, self.tau, negatives, image_ids, queued_ids if negatives is not None else None))
            if self.queue_size:
                fresh = keys.detach()
                self.queue[index] = (
                    torch.cat([fresh, negatives], 0)[: self.queue_size] if negatives is not None else fresh[: self.queue_size]
                )
        if self.queue_size and losses:
            fresh_ids = image_ids.detach().cpu()
            self.queue_ids = (torch.cat([fresh_ids, self.queue_ids], 0) if self.queue_ids is not None else fresh_ids)[: self.queue_size]
        return torch.stack(losses).mean() if losses else torch.zeros(())
