"""The paper's variants as named presets of :class:`EvidenceConfig` (any field can still be overridden).

Table 2: ``base``, ``m`` (+M), ``ma`` (+M+A), ``ours`` (Ours). Ablation 4.1 (injection position and
operator, CE only): ``abl-first-add`` (the seed's, candidate source), ``abl-first-add-aligned`` (the same
with the all-layer rows' aligned source), ``abl-all-concat``, ``abl-all-add``, ``abl-all-ours``.
Ablation 4.3 (loss components on the Ours structure): ``loss-full``, ``loss-no-ctr``,
``loss-no-orth``, ``loss-ce``. The paper's spellings (``+M``, ``+M+A``, ``Ours``) are accepted too.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from hallbench.errors import HallbenchError
from hallbench.train.method import EvidenceConfig


@dataclass(frozen=True)
class Preset:
    name: str
    """Canonical preset name (``ma``)."""
    label: str
    """Label in output folders and tables (``+M+A``), as in the seed's ``output_model_<model>_<label>``."""
    table: str
    """Which table the variant belongs to: ``table2``, ``ablation_injection`` or ``ablation_loss``."""
    evidence: EvidenceConfig

    @property
    def folder_label(self) -> str:
        """The run-folder suffix: the paper's label for Table 2 (``+M+A``), the preset name for ablations."""
        return self.label if self.table == "table2" else self.name


_M = {
    "enable_evidence": True,
    "inject_position": "first_layer_input",
    "inject_op": "add",
    "use_utilization": False,
    "evidence_source": "candidate",
}
_OURS = {
    "enable_evidence": True,
    "inject_position": "per_layer",
    "inject_op": "ours",
    "use_utilization": True,
    "evidence_source": "aligned",
}

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("base", "Base", "table2", EvidenceConfig()),
        Preset("m", "+M", "table2", EvidenceConfig(**_M)),
        Preset("ma", "+M+A", "table2", EvidenceConfig(**_OURS)),
        Preset("ours", "Ours", "table2", EvidenceConfig(**_OURS, lambda_orth=1.0, lambda_ctr=1.0)),
        # The seed's first-layer run is +M (candidate source), while the all-layer rows use the aligned
        # source: "first vs all layers" is confounded with the source there. The aligned twin changes
        # the position alone (tests/test_presets.py names every intended difference).
        Preset("abl-first-add", "First-layer add", "ablation_injection", EvidenceConfig(**_M)),
        Preset(
            "abl-first-add-aligned",
            "First-layer add (aligned)",
            "ablation_injection",
            EvidenceConfig(True, "first_layer_input", "add", False, "aligned"),
        ),
        Preset(
            "abl-all-concat",
            "All-layer concat",
            "ablation_injection",
            EvidenceConfig(True, "per_layer", "concat", False, "aligned"),
        ),
        Preset("abl-all-add", "All-layer add", "ablation_injection", EvidenceConfig(True, "per_layer", "add", False, "aligned")),
        Preset("abl-all-ours", "All-layer ours", "ablation_injection", EvidenceConfig(**_OURS)),
        Preset("loss-full", "Full", "ablation_loss", EvidenceConfig(**_OURS, lambda_orth=1.0, lambda_ctr=1.0)),
        Preset("loss-no-ctr", "w/o L_ctr", "ablation_loss", EvidenceConfig(**_OURS, lambda_orth=1.0, lambda_ctr=0.0)),
        Preset("loss-no-orth", "w/o L_orth", "ablation_loss", EvidenceConfig(**_OURS, lambda_orth=0.0, lambda_ctr=1.0)),
        Preset("loss-ce", "CE only", "ablation_loss", EvidenceConfig(**_OURS)),
    )
}

ALIASES = {"+m": "m", "+m+a": "ma", "ours": "ours", "base": "base"}
TABLE2 = ("base", "m", "ma", "ours")
ABLATION_INJECTION = ("abl-first-add", "abl-first-add-aligned", "abl-all-concat", "abl-all-add", "abl-all-ours")
ABLATION_LOSS = ("loss-full", "loss-no-ctr", "loss-no-orth", "loss-ce")
# Names that expand to several presets in ``hallbench train --variant``.
VARIANT_GROUPS: dict[str, tuple[str, ...]] = {
    "all": TABLE2,
    "table2": TABLE2,
    "ablation_injection": ABLATION_INJECTION,
    "ablation_loss": ABLATION_LOSS,
    "ablations": ABLATION_INJECTION + ABLATION_LOSS,
}


def expand_variants(text: str) -> list[str]:
    """``ours``, ``base,+M``, ``all`` (Table 2), ``ablations``... -> canonical preset names, in order, once each."""
    names: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        for name in VARIANT_GROUPS.get(part.lower(), (part,)):
            canonical = get_preset(name).name
            if canonical not in names:
                names.append(canonical)
    if not names:
        raise HallbenchError("--variant is empty")
    return names


def get_preset(name: str) -> Preset:
    """A preset by canonical name or by the paper's spelling (case-insensitive)."""
    key = ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in PRESETS:
        raise HallbenchError(f"unknown --variant '{name}'; choose one of {', '.join(PRESETS)} (or +M, +M+A, Ours)")
    return PRESETS[key]


def evidence_config(variant: str, overrides: dict[str, Any] | None = None) -> EvidenceConfig:
    """The preset's ``EvidenceConfig`` with ``overrides`` applied; unknown keys and contradictions are errors."""
    base = get_preset(variant).evidence
    overrides = dict(overrides or {})
    known = {f.name for f in fields(EvidenceConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise HallbenchError(f"unknown evidence option(s) {unknown}; valid: {sorted(known)}")
    for key in ("inject_layers", "aux_layers"):
        if isinstance(overrides.get(key), str):
            text = overrides[key].strip()
            overrides[key] = tuple(int(x) for x in text.split(",") if x.strip()) if text else ()
    return replace(base, **overrides)
