"""The paper's variants as presets: the Table 2 flags of the seed, aliases, overrides and contradictions."""

from __future__ import annotations

import pytest

from hallbench.errors import HallbenchError
from hallbench.train.presets import ABLATION_INJECTION, ABLATION_LOSS, PRESETS, TABLE2, evidence_config, get_preset

FLAGS = ("enable_evidence", "inject_position", "inject_op", "use_utilization", "evidence_source", "lambda_orth", "lambda_ctr")


@pytest.mark.parametrize(
    "name, label, expected",
    [
        ("base", "Base", (False, "none", None, None, None, 0.0, 0.0)),
        ("m", "+M", (True, "first_layer_input", "add", False, "candidate", 0.0, 0.0)),
        ("ma", "+M+A", (True, "per_layer", "ours", True, "aligned", 0.0, 0.0)),
        ("ours", "Ours", (True, "per_layer", "ours", True, "aligned", 1.0, 1.0)),
    ],
)
def test_table2_presets_match_the_seed_commands(name, label, expected):
    preset = get_preset(name)
    values = tuple(getattr(preset.evidence, f) for f in FLAGS)
    if name == "base":  # operator/gate/source are meaningless without evidence: only the switches matter
        values = (*values[:2], None, None, None, *values[5:])
    assert (preset.label, values) == (label, expected)


def test_paper_spellings_are_accepted():
    assert [get_preset(s).name for s in ("+M", "+M+A", "Ours", "BASE")] == ["m", "ma", "ours", "base"]
    with pytest.raises(HallbenchError, match=r"unknown --variant '\+X'"):
        get_preset("+X")


# Every ablation against its reference: the method fields that differ, all of them (any other
# difference fails). Ablation 4.1 against All-layer add; 4.3 against Full.
INTENDED = {
    "abl-first-add": ("abl-all-add", {"inject_position", "evidence_source"}),  # the seed's run: position and source (confounded)
    "abl-first-add-aligned": ("abl-all-add", {"inject_position"}),
    "abl-all-concat": ("abl-all-add", {"inject_op"}),
    "abl-all-ours": ("abl-all-add", {"inject_op", "use_utilization"}),  # the ours operator comes with its gate
    "loss-no-ctr": ("loss-full", {"lambda_ctr"}),
    "loss-no-orth": ("loss-full", {"lambda_orth"}),
    "loss-ce": ("loss-full", {"lambda_orth", "lambda_ctr"}),
}


@pytest.mark.parametrize("name", sorted(INTENDED))
def test_each_ablation_changes_exactly_its_named_fields(name):
    from dataclasses import fields

    reference, intended = INTENDED[name]
    a, b = PRESETS[name].evidence, PRESETS[reference].evidence
    differ = {f.name for f in fields(a) if getattr(a, f.name) != getattr(b, f.name)}
    assert differ == intended


def test_ablation_groups_and_their_references():
    assert set(INTENDED) | {"abl-all-add", "loss-full"} == set(ABLATION_INJECTION) | set(ABLATION_LOSS)
    assert all(PRESETS[n].evidence.lambda_orth == PRESETS[n].evidence.lambda_ctr == 0.0 for n in ABLATION_INJECTION)
    assert PRESETS["loss-full"].evidence == PRESETS["ours"].evidence and PRESETS["abl-first-add"].evidence == PRESETS["m"].evidence
    assert {PRESETS[n].table for n in TABLE2} == {"table2"}


def test_overrides_apply_and_contradictions_fail():
    cfg = evidence_config("ours", {"tau": 0.1, "aux_layers": "0,1", "inject_layers": ""})
    assert (cfg.tau, cfg.aux_layers, cfg.inject_layers) == (0.1, (0, 1), ())
    with pytest.raises(HallbenchError, match="lambda_orth/lambda_ctr need evidence modules"):
        evidence_config("base", {"lambda_ctr": 1.0})
    with pytest.raises(HallbenchError, match=r"unknown evidence option\(s\) \['lambda_kl'\]"):
        evidence_config("ours", {"lambda_kl": 1.0})
