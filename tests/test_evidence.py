"""Evidence injection: exact base-equivalence at init, no stuck parameter, text-only injection, the regularisers."""

from __future__ import annotations

import copy

import pytest
import torch

from hallbench.errors import HallbenchError
from hallbench.models import MODEL_REGISTRY, chat_inputs, get_family
from hallbench.train.evidence import ContrastiveLoss, EvidenceConfig, EvidenceInjector, attach_evidence, info_nce, orthogonality_loss
from hallbench.train.presets import PRESETS

CONFIGS = {
    "+M": EvidenceConfig(True, "first_layer_input", "add", False, "candidate"),
    "+M+A": EvidenceConfig(True, "per_layer", "ours", True, "aligned"),
    "ours-candidate": EvidenceConfig(True, "per_layer", "ours", True, "candidate"),
    "all-concat": EvidenceConfig(True, "per_layer", "concat", False, "candidate"),
    "all-concat-aligned": EvidenceConfig(True, "per_layer", "concat", False, "aligned"),
    "all-add": EvidenceConfig(True, "per_layer", "add", False, "candidate"),
    "all-add-aligned": EvidenceConfig(True, "per_layer", "add", False, "aligned"),
    "ours-no-gate": EvidenceConfig(True, "per_layer", "ours", False, "aligned"),
    # Every preset with evidence modules, by name (the lambdas do not change the modules).
    **{f"preset-{name}": preset.evidence for name, preset in PRESETS.items() if preset.evidence.enable_evidence},
}


def _batch(processor, images):
    batch = chat_inputs(processor, images[:2], ["Is there a star in the image?", "What objects are in the image?"])
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = -100
    return batch, labels


@pytest.mark.parametrize("name", [name for name, spec in MODEL_REGISTRY.items() if spec.tiny])  # one tiny model per family
@pytest.mark.parametrize("variant", list(CONFIGS))
def test_init_equals_base_and_no_parameter_is_stuck(name, variant, tiny_models, val_images):
    base, processor = tiny_models[name]
    batch, labels = _batch(processor, val_images)
    with torch.no_grad():
        reference = base(**batch).logits
    model = copy.deepcopy(base)
    evidence = attach_evidence(model, get_family(MODEL_REGISTRY[name].family), CONFIGS[variant], processor)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, reference)  # exact, not approximate

    model.train()
    optimizer = torch.optim.AdamW(model.evidence.parameters(), lr=1e-2)
    received = dict.fromkeys((n for n, _ in model.evidence.named_parameters()), False)
    for _step in range(2):  # CE only: the property must not rely on the regularisers
        model(**batch, labels=labels).loss.backward()
        for n, p in model.evidence.named_parameters():
            received[n] |= bool(p.grad is not None and p.grad.abs().sum() > 0)
        optimizer.step()
        optimizer.zero_grad()
    assert [n for n, ok in received.items() if not ok] == []
    model.eval()
    with torch.no_grad():
        assert not torch.allclose(model(**batch).logits, reference)  # the hooks really inject
    evidence.detach()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, reference)  # and detaching removes them


def test_no_evidence_attaches_nothing(tiny_models):
    model, processor = tiny_models["tiny-qwen"]
    assert attach_evidence(model, get_family("qwen3_vl"), EvidenceConfig(), processor) is None
    assert not hasattr(model, "evidence")


def test_evidence_is_added_at_text_positions_only():
    torch.manual_seed(0)
    injector = EvidenceInjector(16, EvidenceConfig(True, "per_layer", "add", False, "candidate", evidence_dim=8))
    with torch.no_grad():
        injector.scale.fill_(1.0)
    h = torch.randn(2, 5, 16)
    visual = torch.randn(2, 3, 16)
    visual_mask = torch.tensor([[True, True, True], [True, False, False]])
    text_mask = torch.tensor([[False, False, True, True, True], [True, True, True, True, False]])
    new_h, aux = injector(h, visual, visual_mask, text_mask)
    assert torch.equal(new_h[~text_mask], h[~text_mask])
    assert not torch.allclose(new_h[text_mask], h[text_mask])
    # sample 1 has a single valid visual token: every query retrieves exactly it
    assert torch.allclose(aux["e"][1], visual[1, 0].expand(5, 16), atol=1e-6)


def test_topk_keeps_only_the_best_visual_tokens():
    torch.manual_seed(0)
    injector = EvidenceInjector(16, EvidenceConfig(True, "per_layer", "add", False, "candidate", evidence_dim=8, evidence_topk=1))
    visual = torch.randn(1, 4, 16)
    q, c = injector.retrieve(torch.randn(1, 3, 16), visual, torch.ones(1, 4, dtype=torch.bool))
    for t in range(3):  # each candidate is exactly one of the visual tokens
        assert min(torch.dist(c[0, t], visual[0, n]).item() for n in range(4)) < 1e-5


def test_orthogonality_loss_is_zero_for_orthogonal_and_one_for_parallel():
    h = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    orthogonal = {0: {"h": h, "e": torch.tensor([[[0.0, 3.0], [-1.0, 0.0]]]), "text_mask": mask}}
    parallel = {0: {"h": h, "e": torch.tensor([[[2.0, 0.0], [0.0, -5.0]]]), "text_mask": mask}}
    assert orthogonality_loss(orthogonal).item() == pytest.approx(0.0, abs=1e-7)
    assert orthogonality_loss(parallel).item() == pytest.approx(1.0)
    # masked tokens do not count: one parallel token, one orthogonal token masked out
    half = {0: {"h": h, "e": torch.tensor([[[1.0, 0.0], [1.0, 0.0]]]), "text_mask": torch.tensor([[True, False]])}}
    assert orthogonality_loss(half).item() == pytest.approx(1.0)


def test_info_nce_falls_when_the_positive_similarity_rises():
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    far = info_nce(torch.tensor([[0.6, 0.8], [0.8, 0.6]]), keys, tau=0.1)
    near = info_nce(torch.tensor([[0.9, 0.1], [0.1, 0.9]]), keys, tau=0.1)
    assert near.item() < far.item()
    # hand-computed: cos = 1 with the positive, 0 with the negative -> loss = log(1 + exp(-1/tau))
    exact = info_nce(keys.clone(), keys, tau=0.5)
    assert exact.item() == pytest.approx(torch.log1p(torch.exp(torch.tensor(-2.0))).item(), rel=1e-6)


def test_contrastive_queue_gives_negatives_at_batch_size_one(tiny_models, val_images):
    base, processor = tiny_models["tiny-qwen"]
    model = copy.deepcopy(base)
    cfg = EvidenceConfig(True, "per_layer", "ours", True, "aligned", lambda_ctr=1.0, ctr_queue=4)
    evidence = attach_evidence(model, get_family("qwen3_vl"), cfg, processor)
    evidence.state.collect_aux = True
    loss = ContrastiveLoss(cfg.tau, cfg.ctr_queue)
    losses = []
    for n, image in enumerate([*val_images[:3], val_images[0]]):
        batch = chat_inputs(processor, [image], ["Is there a star in the image?"])
        model(**batch)
        image_id = torch.tensor([0 if n == 3 else n])  # the fourth sample shows the first image again
        losses.append(loss(evidence, batch["attention_mask"].bool(), image_id).item())
    assert losses[0] == pytest.approx(0.0, abs=1e-6)  # one sample, empty queue: nothing to contrast
    assert losses[1] > 0.0 and losses[2] > 0.0  # the queue supplies negatives
    assert all(q.shape[0] == 4 for q in loss.queue.values()) and loss.queue_ids.tolist() == [0, 2, 1, 0]


def test_info_nce_masks_negatives_that_show_the_positives_own_image():
    q = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    keys = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    queue = torch.tensor([[0.95, 0.05], [0.0, 1.0]])
    ids, queue_ids = torch.tensor([7, 7, 8]), torch.tensor([7, 9])  # rows 0 and 1: one image, two conversations
    masked = info_nce(q, keys, 0.5, queue, ids, queue_ids)
    # by hand: row 0 keeps columns {0 (positive), 2, queue 1}; row 1 keeps {1 (positive), 2, queue 1};
    # row 2 keeps {0, 1, 2 (positive), queue 0, queue 1} (no other conversation of image 8)
    qn = torch.nn.functional.normalize(q, dim=-1)
    logits = qn @ torch.nn.functional.normalize(torch.cat([keys, queue]), dim=-1).T / 0.5
    keep = [[0, 2, 4], [1, 2, 4], [0, 1, 2, 3, 4]]
    positive = [0, 1, 2]
    expected = torch.stack([torch.logsumexp(logits[i, k], 0) - logits[i, positive[i]] for i, k in enumerate(keep)]).mean()
    assert masked.item() == pytest.approx(expected.item(), rel=1e-6)
    assert info_nce(q, keys, 0.5, queue).item() > masked.item()  # unmasked, the own image pushes the loss up


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"enable_evidence": True, "inject_position": "none"}, "enable_evidence true contradicts inject_position 'none'"),
        ({"lambda_ctr": 1.0}, "lambda_orth/lambda_ctr need evidence modules"),
        (
            {"enable_evidence": True, "inject_position": "per_layer", "inject_op": "add", "use_utilization": True},
            "use_utilization applies to inject_op ours only",
        ),
        ({"enable_evidence": True, "inject_position": "sideways"}, "inject_position must be one of none, first_layer_input, per_layer"),
    ],
)
def test_contradictory_settings_are_errors(kwargs, message):
    with pytest.raises(HallbenchError, match=message):
        EvidenceConfig(**kwargs)


def test_layer_selection_is_checked():
    cfg = EvidenceConfig(True, "per_layer", "ours", True, "aligned", inject_layers=(0, 5))
    with pytest.raises(HallbenchError, match=r"inject_layers \[5\] out of range for a model with 2 decoder layers"):
        cfg.injected_layers(2)
    cfg = EvidenceConfig(True, "per_layer", "ours", True, "aligned", inject_layers=(1,), aux_layers=(0,))
    with pytest.raises(HallbenchError, match=r"aux_layers \[0\] are not injected layers \(\[1\]\)"):
        cfg.aux_layer_set(2)
