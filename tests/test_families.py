"""Every family adapter against its tiny model: the declared classes, module paths, vision tokens, inputs,
pixel budget and one evidence-injection training step. A new ``FAMILIES`` entry is tested here with no
edit to this file."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers
from torch import nn

from hallbench.errors import HallbenchError
from hallbench.models import FAMILIES, chat_inputs, get_family
from hallbench.models.families import PIXEL_BUDGETS
from hallbench.models.tiny import build_family_tiny
from hallbench.train.data import IGNORE_INDEX, Collator, ConversationDataset
from hallbench.train.evidence import ContrastiveLoss, attach_evidence, orthogonality_loss
from hallbench.train.presets import PRESETS, get_preset
from hallbench.train.trainer import token_cross_entropy

FAMILY_NAMES = sorted(FAMILIES)

# What set_pixel_budget records with no bounds given, per declared style: the image processor's own size.
RECORDED = {
    "area": lambda ip: {"min_pixels": ip.size["shortest_edge"], "max_pixels": ip.size["longest_edge"]},
    "longest_edge": lambda ip: {"longest_edge": ip.size["longest_edge"]},
    "fixed": lambda ip: {"height": ip.crop_size["height"], "width": ip.crop_size["width"]},
}
# The (min_pixels, max_pixels) each style refuses: a processor that never upscales has no minimum; a fixed size has neither bound.
REFUSED = {"area": [], "longest_edge": [(4096, None)], "fixed": [(4096, None), (None, 4096)]}


@pytest.fixture(scope="module")
def tiny():
    """family name -> (model, processor), built on first use; tests copy before changing a model."""
    built: dict[str, tuple] = {}

    def get(family: str) -> tuple:
        if family not in built:
            built[family] = build_family_tiny(family)
        return built[family]

    return get


def test_every_pixel_budget_style_has_a_recorded_size():
    assert set(RECORDED) == set(REFUSED) == set(PIXEL_BUDGETS)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_declared_classes_and_modules_resolve(family, tiny):
    adapter = get_family(family)
    model, processor = tiny(family)
    assert isinstance(model, adapter.model_cls())
    assert type(model).__name__ == adapter.model_class
    assert model.config.model_type == family  # family_of_folder finds the family by model_type
    assert type(processor).__name__ == adapter.processor_class
    assert isinstance(processor, getattr(transformers, adapter.processor_class))
    assert isinstance(adapter.vision_tower(model), nn.Module)
    assert isinstance(adapter.language_model(model), nn.Module)
    layers = adapter.decoder_layers(model)
    assert isinstance(layers, nn.ModuleList) and len(layers) == 2  # TinySize().num_layers
    projector = adapter.projector(model)
    assert (projector is None) == (adapter.projector_path is None)
    if projector is not None:
        assert isinstance(projector, nn.Module)
    # The tower, the projector and the decoder are three disjoint parts of the model.
    parts = [adapter.vision_tower(model), adapter.language_model(model), *([projector] if projector is not None else [])]
    ids = [{id(p) for p in part.parameters()} for part in parts]
    assert all(not (a & b) for i, a in enumerate(ids) for b in ids[i + 1 :])


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_vision_tokens_are_special_and_in_a_one_image_sample(family, tiny, val_images):
    adapter = get_family(family)
    _, processor = tiny(family)
    tokenizer = processor.tokenizer
    batch = chat_inputs(processor, val_images[:1], ["Is there a star in the image?"])
    present = set(batch["input_ids"][0].tolist())
    for attributes in (adapter.vision_special_tokens, adapter.memory_tokens):
        for attribute, token_id in zip(attributes, adapter.token_ids(processor, attributes), strict=True):
            # Special tokens: never produced by splitting ordinary text, and the tokenizer knows them.
            assert token_id in tokenizer.all_special_ids, attribute
            assert tokenizer.convert_ids_to_tokens(token_id) != tokenizer.unk_token
            if not attribute.startswith("video_"):  # a sample with one image has no video placeholder
                assert token_id in present, attribute
    assert set(adapter.memory_tokens) <= set(adapter.vision_special_tokens)  # V is never injected into


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_processed_batch_has_every_declared_input_and_runs(family, tiny, val_images):
    adapter = get_family(family)
    model, processor = tiny(family)
    batch = chat_inputs(processor, val_images[:2], ["Is there a star in the image?", "What objects are in the image?"])
    assert set(adapter.image_inputs) | set(adapter.extra_inputs) <= set(batch)
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape[:2] == batch["input_ids"].shape and torch.isfinite(logits).all()


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_set_pixel_budget_returns_the_recorded_size(family, tiny, val_images):
    adapter = get_family(family)
    _, processor = tiny(family)
    processor = copy.deepcopy(processor)
    before = chat_inputs(processor, val_images[:1], ["?"])["input_ids"]
    recorded = adapter.set_pixel_budget(processor, None, None)
    assert recorded == RECORDED[adapter.pixel_budget](processor.image_processor)
    assert all(isinstance(v, int) for v in recorded.values())  # written to JSON run configs
    assert torch.equal(chat_inputs(processor, val_images[:1], ["?"])["input_ids"], before)  # no bounds: the checkpoint's
    for bounds in REFUSED[adapter.pixel_budget]:
        with pytest.raises(HallbenchError, match="pixels"):
            adapter.set_pixel_budget(processor, *bounds)
    assert adapter.set_pixel_budget(processor, None, None) == recorded  # a refusal changes nothing


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("preset", [name for name, p in PRESETS.items() if p.evidence.enable_evidence])
def test_every_preset_attaches_and_starts_as_the_base_model(family, preset, tiny, val_images):
    base, processor = tiny(family)
    batch = chat_inputs(processor, val_images[:2], ["Is there a star in the image?", "What objects are in the image?"])
    model = copy.deepcopy(base)
    evidence = attach_evidence(model, get_family(family), get_preset(preset).evidence, processor)
    assert evidence is not None and len(evidence.modules) == len(evidence.cfg.injected_layers(2))
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, base(**batch).logits)  # one zero element per injector


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_one_ours_training_step_has_finite_loss_and_gradients(family, tiny, shapes_dir):
    adapter = get_family(family)
    base, processor = tiny(family)
    model = copy.deepcopy(base).train()
    cfg = get_preset("ours").evidence
    evidence = attach_evidence(model, adapter, cfg, processor)
    dataset = ConversationDataset(shapes_dir / "train.json", shapes_dir / "images", processor, adapter, 512)
    # Four samples of four images: each one's negatives for L_ctr are the other three.
    first_of_image = {tuple(c.images): i for i, c in reversed(list(enumerate(dataset.conversations)))}
    items = [dataset[i] for i in sorted(first_of_image.values())[:4]]
    batch = Collator(processor.tokenizer.pad_token_id, with_image_ids=True)(items)
    labels, image_ids = batch.pop("labels"), batch.pop("image_ids")
    evidence.state.collect_aux = True
    ce = token_cross_entropy(model(**batch).logits, labels)
    ce = ce.sum() / (labels[:, 1:] != IGNORE_INDEX).sum()
    l_orth = orthogonality_loss(evidence.state.aux)
    l_ctr = ContrastiveLoss(cfg.tau, cfg.ctr_queue)(evidence, labels != IGNORE_INDEX, image_ids)
    loss = ce + cfg.lambda_orth * l_orth + cfg.lambda_ctr * l_ctr
    assert torch.isfinite(loss) and l_ctr > 0
    loss.backward()
    grads = {name: p.grad for name, p in model.evidence.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    moved = {name.split(".", 1)[1] for name, g in grads.items() if g.abs().sum() > 0}
    # At step 0 the zero up-projection gets the CE's gradient and the retrieval gets L_ctr's; the
    # factors behind the zero (down-projection, gate, scale) only move once it has (test_evidence.py).
    assert moved == {"align_up.weight", "q_proj.weight", "k_proj.weight", "norm.weight"}
    assert len(evidence.modules) == 2  # ours injects before every decoder layer
