"""The evidence method's settings (:class:`EvidenceConfig`), free of torch.

Kept apart from ``evidence.py`` (the modules) so that what only reads settings (the presets, the
training config, ``hallbench report``) never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from hallbench.errors import HallbenchError

POSITIONS = ("none", "first_layer_input", "per_layer")
OPERATORS = ("add", "concat", "ours")
SOURCES = ("candidate", "aligned")


@dataclass(frozen=True)
class EvidenceConfig:
    """The evidence method's switches (the seed's ``--enable_evidence ... --aux_layers`` flags)."""

    enable_evidence: bool = False
    """Add evidence modules at all; false = the Base model (plain fine-tuning)."""
    inject_position: str = "none"
    """``none``, ``first_layer_input`` (once, into the input embeddings) or ``per_layer`` (before decoder layers)."""
    inject_op: str = "add"
    """``add`` (h + s e), ``concat`` (h + W_c [h; e]) or ``ours`` (h + u e, u the utilization gate)."""
    use_utilization: bool = False
    """``ours`` only: a per-token gate u = sigmoid(w_u [RMSNorm(h); e] + b_u); false = u is 1."""
    evidence_source: str = "candidate"
    """``candidate`` (the retrieved visual mixture c) or ``aligned`` (W_a c, a learned low-rank projection)."""
    evidence_dim: int = 64
    """d_e: width of the retrieval queries/keys and rank of the alignment projection."""
    evidence_topk: int = 0
    """Attend to the K best-matching visual tokens only; 0 = all."""
    inject_layers: tuple[int, ...] = ()
    """``per_layer``: decoder layers to inject into (a comma list such as "0,4,8" on the command line); empty = all."""
    aux_layers: tuple[int, ...] = ()
    """Layers whose aux tensors feed L_orth and L_ctr (a comma list such as "0,1,2"); empty = all injected layers."""
    lambda_orth: float = 0.0
    """Weight of L_orth (cos^2 between evidence and residual stream)."""
    lambda_ctr: float = 0.0
    """Weight of L_ctr (InfoNCE between pooled text queries and pooled visual memories)."""
    tau: float = 0.07
    """InfoNCE temperature."""
    ctr_queue: int = 64
    """Size of the FIFO queue of recent images' pooled memories used as extra L_ctr negatives."""

    def __post_init__(self) -> None:
        problems = []
        if self.inject_position not in POSITIONS:
            problems.append(f"inject_position must be one of {', '.join(POSITIONS)}, got '{self.inject_position}'")
        if self.inject_op not in OPERATORS:
            problems.append(f"inject_op must be one of {', '.join(OPERATORS)}, got '{self.inject_op}'")
        if self.evidence_source not in SOURCES:
            problems.append(f"evidence_source must be one of {', '.join(SOURCES)}, got '{self.evidence_source}'")
        if self.enable_evidence != (self.inject_position != "none"):
            problems.append(
                f"enable_evidence {str(self.enable_evidence).lower()} contradicts inject_position '{self.inject_position}' "
                "(evidence needs a position; position none means no evidence)"
            )
        if not self.enable_evidence and (self.lambda_orth or self.lambda_ctr):
            problems.append("lambda_orth/lambda_ctr need evidence modules (inject_position none has no aux tensors)")
        if self.use_utilization and self.inject_op != "ours":
            problems.append(f"use_utilization applies to inject_op ours only, got inject_op '{self.inject_op}'")
        if self.inject_position == "first_layer_input" and self.inject_layers:
            problems.append("inject_layers applies to inject_position per_layer only")
        if self.evidence_dim < 1 or self.evidence_topk < 0 or self.ctr_queue < 0:
            problems.append("evidence_dim must be >= 1, evidence_topk and ctr_queue >= 0")
        if self.tau <= 0 or self.lambda_orth < 0 or self.lambda_ctr < 0:
            problems.append("tau must be > 0 and the lambdas >= 0")
        if problems:
            raise HallbenchError("invalid evidence settings: " + "; ".join(problems))

    def injected_layers(self, n_layers: int) -> list[int]:
        """Decoder layer indices that get an injector (``first_layer_input`` is layer 0's input)."""
        if self.inject_position == "none":
            return []
        if self.inject_position == "first_layer_input":
            return [0]
        bad = [i for i in self.inject_layers if not 0 <= i < n_layers]
        if bad:
            raise HallbenchError(f"inject_layers {bad} out of range for a model with {n_layers} decoder layers")
        return sorted(set(self.inject_layers)) or list(range(n_layers))

    def aux_layer_set(self, n_layers: int) -> list[int]:
        injected = self.injected_layers(n_layers)
        if not self.aux_layers:
            return injected
        missing = [i for i in self.aux_layers if i not in injected]
        if missing:
            raise HallbenchError(f"aux_layers {missing} are not injected layers ({injected})")
        return sorted(set(self.aux_layers))
