"""Training data: answer-only labels, batching that changes nothing, clear errors for bad samples."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from hallbench.errors import DataFormatError, HallbenchError
from hallbench.models.families import get_family
from hallbench.train.data import IGNORE_INDEX, Collator, ConversationDataset
from hallbench.train.evidence import attach_evidence
from hallbench.train.presets import evidence_config
from hallbench.train.trainer import token_cross_entropy

FAMILY = {"tiny-qwen": "qwen3_vl", "tiny-ministral": "mistral3", "tiny-llava": "llava"}


def _dataset(shapes_dir, processor, name, max_length=512):
    return ConversationDataset(shapes_dir / "train.json", shapes_dir / "images", processor, get_family(FAMILY[name]), max_length)


@pytest.mark.parametrize("name", ["tiny-qwen", "tiny-ministral", "tiny-llava"])
def test_labels_cover_exactly_the_answer_and_end_of_turn(shapes_dir, tiny_models, name):
    _, processor = tiny_models[name]
    dataset = _dataset(shapes_dir, processor, name)
    index = next(i for i, c in enumerate(dataset.conversations) if c.id.endswith("-exist-0"))
    encoded = dataset[index]
    tokens = processor.tokenizer.convert_ids_to_tokens(encoded.labels[encoded.labels != IGNORE_INDEX].tolist())
    end = {"tiny-qwen": "<|im_end|>", "tiny-ministral": "</s>", "tiny-llava": "</s>"}[name]  # LLaVA's: appended
    assert tokens == ["yes", ".", end]
    # Image tokens are in the ids but never in the labels.
    image_token = processor.tokenizer.convert_tokens_to_ids(
        {"tiny-qwen": "<|image_pad|>", "tiny-ministral": "[IMG]", "tiny-llava": "<image>"}[name]
    )
    assert (encoded.input_ids == image_token).sum() == 4
    assert not (encoded.labels == image_token).any()


def _write_two_turns(path, image: str) -> None:
    """A training file of one conversation with two question-answer turns about ``image``."""
    turns = [
        {"from": "human", "value": "<image>\nIs there a ring in the image?"},
        {"from": "gpt", "value": "Yes."},
        {"from": "human", "value": "What objects are in the image?"},
        {"from": "gpt", "value": "Ring."},
    ]
    path.write_text(json.dumps([{"id": "a", "image": image, "conversations": turns}]))


def test_multi_turn_conversation_labels_every_answer(tmp_path, shapes_dir, tiny_models):
    _, processor = tiny_models["tiny-qwen"]
    image = sorted((shapes_dir / "images").glob("*.png"))[0].name
    _write_two_turns(tmp_path / "train.json", image)
    dataset = ConversationDataset(tmp_path / "train.json", shapes_dir / "images", processor, get_family("qwen3_vl"), 512)
    encoded = dataset[0]
    tokens = processor.tokenizer.convert_ids_to_tokens(encoded.labels[encoded.labels != IGNORE_INDEX].tolist())
    assert tokens == ["yes", ".", "<|im_end|>", "ring", ".", "<|im_end|>"]
    assert encoded.mm_token_type_ids is not None and int(encoded.mm_token_type_ids.sum()) == 4
    assert len(encoded.mm_token_type_ids) == len(encoded.input_ids)


@pytest.mark.parametrize("name", ["tiny-qwen", "tiny-ministral"])
@pytest.mark.parametrize("variant", ["base", "ours"])
def test_batch_of_four_gives_each_sample_its_loss_alone(shapes_dir, tiny_models, name, variant):
    """Padding and batching change nothing: per-token CE of each sample in a batch of 4 == alone."""
    model, processor = tiny_models[name]
    model = _fresh_copy(model)
    evidence = attach_evidence(model, get_family(FAMILY[name]), evidence_config(variant), processor)
    if evidence is not None:  # make the injection non-zero so that it is tested too
        torch.manual_seed(1)
        with torch.no_grad():
            for p in evidence.modules.parameters():
                p.add_(torch.randn_like(p) * 0.1)
    dataset = _dataset(shapes_dir, processor, name)
    # Different lengths: a caption, a list, two yes/no questions.
    items = [dataset[i] for i in (0, 1, 2, 3)]
    assert len({len(e.input_ids) for e in items}) > 1
    collate = Collator(processor.tokenizer.pad_token_id)
    model.eval()
    with torch.no_grad():
        batch = collate(items)
        labels = batch.pop("labels")
        batched = token_cross_entropy(model(**batch).logits, labels)
        for row, item in enumerate(items):
            alone = collate([item])
            alone_labels = alone.pop("labels")
            single = token_cross_entropy(model(**alone).logits, alone_labels)[0]
            n = len(single)
            torch.testing.assert_close(batched[row, :n], single, atol=1e-5, rtol=1e-5)
            assert (batched[row, n:] == 0).all()  # padding contributes nothing
            assert (single > 0).sum() == (alone_labels[0, 1:] != IGNORE_INDEX).sum()


def _fresh_copy(model):
    import copy

    return copy.deepcopy(model)


def test_collator_pads_right_and_concatenates_images(shapes_dir, tiny_models):
    _, processor = tiny_models["tiny-ministral"]
    dataset = _dataset(shapes_dir, processor, "tiny-ministral")
    items = [dataset[0], dataset[2]]
    batch = Collator(processor.tokenizer.pad_token_id)(items)
    short = min(range(2), key=lambda i: len(items[i].input_ids))
    n = len(items[short].input_ids)
    assert batch["attention_mask"][short].tolist() == [1] * n + [0] * (batch["input_ids"].shape[1] - n)
    assert (batch["input_ids"][short, n:] == processor.tokenizer.pad_token_id).all()
    assert (batch["labels"][short, n:] == IGNORE_INDEX).all()
    assert batch["pixel_values"].shape == (2, 3, 64, 64)
    assert batch["image_sizes"].tolist() == [[64, 64], [64, 64]]
    assert "image_ids" not in batch  # the model never sees them; only L_ctr asks for them


def test_the_collator_passes_image_identities_for_l_ctr(shapes_dir, tiny_models):
    from hallbench.train.data import image_key

    _, processor = tiny_models["tiny-qwen"]
    dataset = _dataset(shapes_dir, processor, "tiny-qwen")
    same = [i for i, c in enumerate(dataset.conversations) if c.images == dataset.conversations[0].images]
    other = next(i for i, c in enumerate(dataset.conversations) if c.images != dataset.conversations[0].images)
    assert len(same) >= 2  # the shapes world has several conversations per image
    ids = Collator(processor.tokenizer.pad_token_id, with_image_ids=True)([dataset[same[0]], dataset[same[1]], dataset[other]])["image_ids"]
    assert ids[0] == ids[1] != ids[2] and ids[0].item() == image_key(dataset.conversations[0].images)
    assert image_key(["a.png"]) == image_key(["a.png"]) != image_key(["a.png", "b.png"])  # stable, from the names


def _write(tmp_path, records):
    path = tmp_path / "train.json"
    path.write_text(json.dumps(records))
    return path


def test_missing_image_is_reported_before_training(tmp_path, shapes_dir, tiny_models):
    _, processor = tiny_models["tiny-qwen"]
    turns = [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]
    path = _write(tmp_path, [{"id": "s1", "image": "nope.png", "conversations": turns}])
    with pytest.raises(HallbenchError, match=r"image not found: .*nope\.png \(referenced by .*train\.json, \$\[0\]\)"):
        ConversationDataset(path, shapes_dir / "images", processor, get_family("qwen3_vl"), 512)


def test_sample_without_assistant_turn_is_an_error(tmp_path, shapes_dir, tiny_models):
    _, processor = tiny_models["tiny-qwen"]
    image = sorted((shapes_dir / "images").glob("*.png"))[0].name
    path = _write(tmp_path, [{"id": "s1", "image": image, "conversations": [{"from": "human", "value": "<image>\nq"}]}])
    with pytest.raises(DataFormatError, match=r"\[0\]\.conversations.*at least one 'gpt'"):
        ConversationDataset(path, shapes_dir / "images", processor, get_family("qwen3_vl"), 512)


def test_too_long_sample_is_an_error_not_a_truncation(shapes_dir, tiny_models):
    _, processor = tiny_models["tiny-qwen"]
    dataset = _dataset(shapes_dir, processor, "tiny-qwen", max_length=12)
    with pytest.raises(HallbenchError, match=r"sample '1-caption' is 29 tokens long .* more than max_length 12"):
        dataset[0]


def test_cache_keeps_samples_and_shares_pixels_per_image(shapes_dir, tiny_models):
    _, processor = tiny_models["tiny-qwen"]
    dataset = ConversationDataset(shapes_dir / "train.json", shapes_dir / "images", processor, get_family("qwen3_vl"), 512, cache=True)
    same_image = [i for i, c in enumerate(dataset.conversations) if c.images == dataset.conversations[0].images]
    assert len(same_image) > 1
    first, second = dataset[same_image[0]], dataset[same_image[1]]
    assert dataset[same_image[0]] is first
    assert first.images["pixel_values"] is second.images["pixel_values"]
    fresh = _dataset(shapes_dir, processor, "tiny-qwen")[same_image[1]]
    assert torch.equal(fresh.input_ids, second.input_ids) and torch.equal(fresh.images["pixel_values"], second.images["pixel_values"])


def test_an_answer_the_template_leaves_unended_gets_the_eos(tmp_path, shapes_dir, tiny_models):
    """A template with no end-of-turn marker after an answer (llava-hf's renders "ASSISTANT: text "):
    every answer's labels still end with eos, so the model learns to stop."""
    _, processor = tiny_models["tiny-qwen"]
    processor = copy.deepcopy(processor)
    processor.chat_template = (
        "{% for message in messages %}{{ message['role'] }} : {% for part in message['content'] %}"
        "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ part['text'] }} {% endif %}"
        "{% endfor %}{% endfor %}{% if add_generation_prompt %}assistant :{% endif %}"
    )
    image = sorted((shapes_dir / "images").glob("*.png"))[0].name
    _write_two_turns(tmp_path / "train.json", image)
    encoded = ConversationDataset(tmp_path / "train.json", shapes_dir / "images", processor, get_family("qwen3_vl"), 512)[0]
    tokens = processor.tokenizer.convert_ids_to_tokens(encoded.input_ids.tolist())
    labelled = processor.tokenizer.convert_ids_to_tokens(encoded.labels[encoded.labels != IGNORE_INDEX].tolist())
    assert labelled == ["yes", ".", "<|im_end|>", "ring", ".", "<|im_end|>"]
    question = ["is", "there", "a", "ring", "in", "the", "image", "?"]
    image_tokens = ["<|vision_start|>", *["<|image_pad|>"] * 4, "<|vision_end|>"]
    assert tokens == [
        "user", ":", *image_tokens, *question, "assistant", ":", "yes", ".", "<|im_end|>",
        "user", ":", "what", "objects", "are", "in", "the", "image", "?", "assistant", ":", "ring", ".", "<|im_end|>",
    ]  # fmt: skip
    assert len(encoded.mm_token_type_ids) == len(encoded.input_ids)  # the appended eos is a text position
