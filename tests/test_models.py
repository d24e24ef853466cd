"""Tiny real VLMs: build, save/reload, train, batched generation; registry resolution and its errors."""

from __future__ import annotations

import pytest
import torch

from hallbench.errors import ModelNotFoundError
from hallbench.models import chat_inputs, get_family, load_model, resolve_model
from hallbench.models.registry import MODEL_REGISTRY

TINY = tuple(name for name, spec in MODEL_REGISTRY.items() if spec.tiny)  # tiny-qwen, tiny-ministral, tiny-llava


def _training_batch(processor, images, questions, answers):
    """Inputs with labels on the assistant answer only (a minimal collator for these tests)."""
    prompts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}], add_generation_prompt=True
        )
        for q in questions
    ]
    full = [p + a + processor.tokenizer.eos_token for p, a in zip(prompts, answers, strict=True)]
    processor.tokenizer.padding_side = "right"
    batch = processor(text=full, images=images, padding=True, return_tensors="pt")
    prompt_lens = [
        len(processor(text=[p], images=[im], return_tensors="pt")["input_ids"][0]) for p, im in zip(prompts, images, strict=True)
    ]
    labels = batch["input_ids"].clone()
    for row, n in enumerate(prompt_lens):
        labels[row, :n] = -100
    labels[batch["attention_mask"] == 0] = -100
    batch["labels"] = labels
    return batch


@pytest.mark.parametrize("name", TINY)
def test_tiny_model_is_the_real_class_and_small(name, tiny_models):
    model, processor = tiny_models[name]
    family = get_family(MODEL_REGISTRY[name].family)
    assert type(model).__name__ == family.model_class
    assert len(family.decoder_layers(model)) == 2
    assert family.vision_tower(model) is not None
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    # the tokenizer knows every shapes-world word: nothing maps to [UNK]
    ids = processor.tokenizer("Is there a lightning bolt in the image?")["input_ids"]
    assert processor.tokenizer.unk_token_id not in ids
    # (a Llama-style tokenizer puts bos first: tiny-llava's, as LLaVA's)
    assert processor.tokenizer.decode(ids, skip_special_tokens=True) == "is there a lightning bolt in the image?"


@pytest.mark.parametrize("name", TINY)
def test_save_reload_gives_identical_logits(name, tiny_models, val_images, tmp_path):
    model, processor = tiny_models[name]
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    reloaded = load_model(str(tmp_path), device="cpu")
    assert reloaded.resolved.source == "path"
    assert type(reloaded.processor) is type(processor)
    prompts = ["Is there a star in the image?", "<image>\nPlease describe this image in detail."]
    with torch.no_grad():
        before = model(**chat_inputs(processor, val_images[:2], prompts)).logits
        after = reloaded.model(**chat_inputs(reloaded.processor, val_images[:2], prompts)).logits
    assert torch.equal(before, after)


@pytest.mark.parametrize("name", TINY)
def test_one_step_lowers_the_loss_on_a_repeated_batch(name, val_images):
    loaded = load_model(name, device="cpu")
    model, processor = loaded.model.train(), loaded.processor
    batch = _training_batch(
        processor, val_images[:2], ["Is there a star in the image?", "What objects are in the image?"], ["Yes.", "Star, moon and bolt."]
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    first = model(**batch).loss
    first.backward()
    optimizer.step()
    optimizer.zero_grad()
    with torch.no_grad():
        second = model(**batch).loss
    assert torch.isfinite(first)
    assert second.item() < first.item() - 0.01


@pytest.mark.parametrize("name", TINY)
def test_batched_left_padded_generation_matches_one_at_a_time(name, tiny_models, val_images):
    model, processor = tiny_models[name]
    # prompts of different lengths, so the batch really is left-padded
    prompts = ["Is there a star in the image?", "Please describe this image in detail.", "How many objects are in the image?"]
    images = val_images[:3]
    batch = chat_inputs(processor, images, prompts)
    assert (batch["attention_mask"][:, 0] == 0).any()
    with torch.no_grad():
        together = model.generate(**batch, max_new_tokens=6, min_new_tokens=6, do_sample=False)
        new_together = together[:, batch["input_ids"].shape[1] :]
        for row, (image, prompt) in enumerate(zip(images, prompts, strict=True)):
            single = chat_inputs(processor, [image], [prompt])
            alone = model.generate(**single, max_new_tokens=6, min_new_tokens=6, do_sample=False)
            assert torch.equal(alone[0, single["input_ids"].shape[1] :], new_together[row])
    assert new_together.shape == (3, 6)
    assert all(isinstance(t, str) for t in processor.batch_decode(new_together, skip_special_tokens=True))


def test_registry_names_and_display_names():
    assert {n: s.display_name for n, s in MODEL_REGISTRY.items() if not s.tiny} == {
        "qwen2b": "Qwen3-VL-2B",
        "qwen4b": "Qwen3-VL-4B",
        "ministral3b": "Ministral-3-3B",
        "llava7b": "LLaVA-1.5-7B",
    }
    assert MODEL_REGISTRY["llava7b"].hub_id == "llava-hf/llava-1.5-7b-hf"
    assert {n: s.family for n, s in MODEL_REGISTRY.items() if s.tiny} == {
        "tiny-qwen": "qwen3_vl",
        "tiny-ministral": "mistral3",
        "tiny-llava": "llava",
    }
    assert MODEL_REGISTRY["qwen2b"].hub_id == "Qwen/Qwen3-VL-2B-Instruct"
    assert MODEL_REGISTRY["ministral3b"].local_dir == "Ministral-3-3B-Instruct-2512"


def test_missing_registry_model_names_every_place_tried(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("qwen2b", basemodel=tmp_path / "basemodel")
    message = str(info.value)
    assert f"Tried: {tmp_path / 'basemodel' / 'Qwen3-VL-2B-Instruct'}/config.json" in message
    assert "Hugging Face cache" in message
    assert "hf download Qwen/Qwen3-VL-2B-Instruct" in message


def test_basemodel_folder_is_found_first(tmp_path, tiny_models):
    model, processor = tiny_models["tiny-qwen"]
    folder = tmp_path / "basemodel" / "Qwen3-VL-2B-Instruct"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    resolved = resolve_model("qwen2b", basemodel=tmp_path / "basemodel")
    assert (resolved.source, resolved.path, resolved.display_name) == ("basemodel", folder, "Qwen3-VL-2B")


def test_bad_paths_and_ids(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelNotFoundError, match="has no config.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="'someone/some-model' is not in the Hugging Face cache"):
        resolve_model("someone/some-model")
    with pytest.raises(ModelNotFoundError, match=r"no model folder at .*missing-dir and '.*missing-dir' is not a registry name"):
        resolve_model(str(tmp_path / "missing-dir"))


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "idefics3"}')
    with pytest.raises(Exception, match="unsupported model type 'idefics3': hallbench supports qwen3_vl, mistral3, llava"):
        load_model(str(tmp_path), device="cpu")
