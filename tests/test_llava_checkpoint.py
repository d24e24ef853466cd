"""llava-hf/llava-1.5-7b-hf as a checkpoint-shaped folder: its published configuration, processor files
and chat template, a stand-in tokenizer with its special-token ids, random weights at narrow width.

The published files are written from this module (not packaged in hallbench/models/checkpoints/, so
``hallbench.models.checkpoint_shapes`` has no ``llava7b`` shape yet). The Llama-2 tokenizer files are
not available offline: the stand-in is word-level over the shapes-world words, with LLaVA's ids
(``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, ``<image>`` 32000, ``<pad>`` 32001) and bos added on encoding as
Llama's tokenizer does. The folder goes the way a user's download would: ``hallbench train --model
llava7b`` (found in ``HALLBENCH_BASEMODEL_DIR``) -> run folder -> ``hallbench eval``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from hallbench.cli import app
from hallbench.models import chat_inputs, load_model, resolve_model
from hallbench.train.data import IGNORE_INDEX, ConversationDataset

runner = CliRunner()
FOLDER = "llava-1.5-7b-hf"  # the registry's basemodel/ folder name

# The checkpoint's files as published (values of the llava-hf repository).
CONFIG = {
    "architectures": ["LlavaForConditionalGeneration"],
    "ignore_index": -100,
    "image_token_index": 32000,
    "model_type": "llava",
    "pad_token_id": 32001,
    "projector_hidden_act": "gelu",
    "text_config": {
        "_name_or_path": "lmsys/vicuna-7b-v1.5",
        "architectures": ["LlamaForCausalLM"],
        "max_position_embeddings": 4096,
        "model_type": "llama",
        "rms_norm_eps": 1e-05,
        "torch_dtype": "float16",
        "vocab_size": 32064,
    },
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
    "vision_config": {
        "hidden_size": 1024,
        "image_size": 336,
        "intermediate_size": 4096,
        "model_type": "clip_vision_model",
        "num_attention_heads": 16,
        "num_hidden_layers": 24,
        "patch_size": 14,
        "projection_dim": 768,
        "vocab_size": 32000,
    },
    "vision_feature_layer": -2,
    "vision_feature_select_strategy": "default",
    "vocab_size": 32064,
}
GENERATION_CONFIG = {"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 32001}
PREPROCESSOR_CONFIG = {
    "crop_size": {"height": 336, "width": 336},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_processor_type": "CLIPImageProcessor",
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "processor_class": "LlavaProcessor",
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 336},
}
PROCESSOR_CONFIG = {
    "image_token": "<image>",
    "num_additional_image_tokens": 1,
    "patch_size": 14,
    "processor_class": "LlavaProcessor",
    "vision_feature_select_strategy": "default",
}
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}{% endfor %}"
    "{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{% generation %}"
    "{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def _stand_in_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from hallbench.data.shapes import vocabulary

    words = ["<unk>", "<s>", "</s>", *vocabulary()]
    tokens = [*words, *(f"<unused_{i}>" for i in range(32000 - len(words))), "<image>", "<pad>"]
    backend = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece(prefix="\u2060\u2060", cleanup=True)
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        additional_special_tokens=["<image>"], padding_side="left",
    )  # fmt: skip
    assert tokenizer.convert_tokens_to_ids(["<image>", "<pad>"]) == [32000, 32001]
    tokenizer.save_pretrained(str(folder))


@pytest.fixture(scope="module")
def basemodel(tmp_path_factory):
    """basemodel/llava-1.5-7b-hf: the published files; 2 decoder layers 128 wide (head_dim 128 as
    published), the 24 CLIP layers 64 wide (vision_feature_layer -2 is the real one's), fp16 weights."""
    import transformers

    root = tmp_path_factory.mktemp("basemodel")
    folder = root / FOLDER
    config = copy.deepcopy(CONFIG)
    config["text_config"].update(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=1, head_dim=128)
    config["vision_config"].update(hidden_size=64, intermediate_size=128, num_attention_heads=2)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = transformers.LlavaForConditionalGeneration(transformers.LlavaConfig.from_dict(copy.deepcopy(config)))
    model.to(torch.float16).save_pretrained(str(folder))
    files = {
        "config.json": config,
        "generation_config.json": GENERATION_CONFIG,
        "preprocessor_config.json": PREPROCESSOR_CONFIG,
        "processor_config.json": PROCESSOR_CONFIG,
        "chat_template.json": {"chat_template": CHAT_TEMPLATE},
    }
    for name, content in files.items():
        (folder / name).write_text(json.dumps(content, indent=2), encoding="utf-8")
    _stand_in_tokenizer(folder)
    return root


@pytest.fixture
def use_basemodel(basemodel, monkeypatch):
    monkeypatch.setenv("HALLBENCH_BASEMODEL_DIR", str(basemodel))
    return basemodel


def test_the_registry_name_loads_the_llava_hf_layout(use_basemodel, val_images):
    resolved = resolve_model("llava7b")
    assert (resolved.source, resolved.path, resolved.display_name) == ("basemodel", use_basemodel / FOLDER, "LLaVA-1.5-7B")
    loaded = load_model("llava7b", device="cpu")
    model, processor, family = loaded.model, loaded.processor, loaded.family
    assert (family.name, type(model).__name__, type(processor).__name__) == ("llava", "LlavaForConditionalGeneration", "LlavaProcessor")
    assert type(processor.image_processor).__name__ == "CLIPImageProcessor"
    assert loaded.checkpoint_dtype == "float16"  # a run folder saves its weights as the checkpoint stores them
    assert family.vision_tower(model).config.num_hidden_layers == 24  # vision_feature_layer -2 is the 23rd
    assert family.set_pixel_budget(processor, None, None) == {"height": 336, "width": 336}
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is there a star in the image?"}]}],
        add_generation_prompt=True,
    )
    assert text == "USER: <image>\nIs there a star in the image? ASSISTANT:"
    batch = chat_inputs(processor, val_images[:1], ["Is there a star in the image?"])
    # 336 px / 14 = 24 x 24 patches; the CLS token is counted and then dropped ("default" strategy).
    assert int((batch["input_ids"] == 32000).sum()) == 576
    assert batch["input_ids"][0, 0] == 1  # bos from the tokenizer: the template renders none
    assert batch["pixel_values"].shape == (1, 3, 336, 336)
    with torch.no_grad():
        assert torch.isfinite(model(**batch).logits).all()


def test_training_labels_end_each_answer_with_eos(use_basemodel, shapes_dir):
    """The checkpoint's template ends an answer with a space ("ASSISTANT: yes. "): the eos is appended."""
    loaded = load_model("llava7b", device="cpu")
    dataset = ConversationDataset(shapes_dir / "train.json", shapes_dir / "images", loaded.processor, loaded.family, 1024)
    index = next(i for i, c in enumerate(dataset.conversations) if c.id.endswith("-exist-0"))
    encoded = dataset[index]
    labelled = encoded.labels[encoded.labels != IGNORE_INDEX].tolist()
    assert loaded.processor.tokenizer.convert_ids_to_tokens(labelled) == ["yes", ".", "</s>"]
    assert int((encoded.input_ids == 32000).sum()) == 576 and encoded.input_ids[-1] == 2


def test_train_and_evaluate_through_the_cli(use_basemodel, shapes_dir, pope_dir, tmp_path):
    records = json.loads((shapes_dir / "train.json").read_text())[:4]
    data = tmp_path / "train.json"
    data.write_text(json.dumps(records))
    result = runner.invoke(
        app,
        ["train", "--model", "llava7b", "--variant", "ours", "--data", str(data), "--images", str(shapes_dir / "images"),
         "--output-root", str(tmp_path / "runs" / "train"), "--batch-size", "2", "--set", "max_steps=2", "--logging-steps", "1"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "train" / "output_model_LLaVA-1.5-7B_Ours"
    config = json.loads((run / "hallbench_config.json").read_text())
    assert (config["model"]["family"], config["saved_dtype"], config["image_size"]) == ("llava", "float16", {"height": 336, "width": 336})
    assert json.loads((run / "config.json").read_text())["model_type"] == "llava"
    result = runner.invoke(
        app,
        ["eval", "--bench", "pope", "--model", str(run), "--data", str(pope_dir), "--split", "random", "--max-samples", "2",
         "--max-new-tokens", "4", "--out", str(tmp_path / "eval")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    predictions = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 2 and all(p["error"] is None for p in predictions)
    assert json.loads((tmp_path / "eval" / "config.json").read_text())["backend"]["training_run"]["variant"]["name"] == "ours"
