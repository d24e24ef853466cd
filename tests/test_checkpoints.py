"""The three real checkpoints, as checkpoint-shaped folders: published configs, real tokenizers and chat
templates, Ministral's FP8 weights; random weights and fewer, narrower layers.

Each model goes the way a user's would: ``hallbench train --model NAME`` (found in
``HALLBENCH_BASEMODEL_DIR``) -> run folder -> ``AutoProcessor`` reload -> POPE, CHAIR and VQA -> report.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from hallbench.cli import app
from hallbench.errors import HallbenchError
from hallbench.models import chat_inputs, load_model
from hallbench.models.checkpoint_shapes import CHECKPOINTS, FP8_MAX, ShapeOptions, build_checkpoint_shaped, reference_config

runner = CliRunner()
NAMES = tuple(CHECKPOINTS)  # qwen2b, qwen4b, ministral3b


@pytest.fixture(scope="module")
def basemodel(tmp_path_factory):
    """A basemodel/ folder holding the three checkpoint-shaped folders, as a user lays out downloads."""
    root = tmp_path_factory.mktemp("basemodel")
    for name, folder in CHECKPOINTS.items():
        build_checkpoint_shaped(name, root / folder)
    return root


@pytest.fixture
def use_basemodel(basemodel, monkeypatch):
    monkeypatch.setenv("HALLBENCH_BASEMODEL_DIR", str(basemodel))
    return basemodel


def _vision_ids(loaded):
    family = loaded.family
    return family.token_ids(loaded.processor, family.vision_special_tokens)


@pytest.mark.parametrize("name", NAMES)
def test_folder_carries_the_published_values(name, basemodel):
    folder = basemodel / CHECKPOINTS[name]
    config = json.loads((folder / "config.json").read_text())
    published = reference_config(name)
    generation = json.loads((folder / "generation_config.json").read_text())
    if name.startswith("qwen"):
        assert (config["image_token_id"], config["vision_start_token_id"], config["vision_end_token_id"]) == (151655, 151652, 151653)
        assert config["vision_config"]["deepstack_visual_indexes"] == [5, 11, 17]
        assert config["vision_config"]["depth"] == 18  # the DeepStack layers exist
        assert config["text_config"]["rope_scaling"] == published["text_config"]["rope_scaling"]  # mrope [24, 20, 20]
        assert config["text_config"]["head_dim"] == 128
        assert (generation["do_sample"], generation["temperature"], generation["top_k"]) == (True, 0.7, 20)
    else:
        assert config["quantization_config"]["quant_method"] == "fp8"
        assert config["text_config"]["rope_parameters"] == published["text_config"]["rope_parameters"]  # yarn, llama-4 scaling
        assert (folder / "tekken.json").is_file()
    assert config["text_config"]["num_hidden_layers"] == 2 and config["text_config"]["vocab_size"] == published["text_config"]["vocab_size"]


@pytest.mark.parametrize("name", NAMES)
def test_autoprocessor_loads_the_real_processor_and_tokenizer(name, basemodel):
    from transformers import AutoProcessor

    folder = basemodel / CHECKPOINTS[name]
    loaded = load_model(str(folder), device="cpu")
    processor = loaded.processor
    assert type(processor).__name__ == loaded.family.processor_class
    tokenizer = processor.tokenizer
    if name.startswith("qwen"):
        assert len(tokenizer) == 151669
        assert tokenizer.convert_tokens_to_ids(["<|image_pad|>", "<|vision_start|>", "<|vision_end|>", "<|im_end|>"]) == [
            151655,
            151652,
            151653,
            151645,
        ]
    else:
        assert tokenizer.convert_tokens_to_ids(["[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]", "<s>", "</s>"]) == [10, 11, 12, 13, 1, 2]
    assert type(AutoProcessor.from_pretrained(str(folder))).__name__ == loaded.family.processor_class


def test_mistral_common_installed_does_not_break_ministral(basemodel, tmp_path):
    """With mistral-common (as vLLM installs it) AutoTokenizer returns MistralCommonBackend, which
    encodes "[IMG]" as text; hallbench keeps the tokenizers backend, also for a tekken.json-only folder."""
    from transformers import AutoTokenizer

    folder = basemodel / CHECKPOINTS["ministral3b"]
    assert type(AutoTokenizer.from_pretrained(str(folder))).__name__ == "MistralCommonBackend"  # the trap is real here
    tekken_only = build_checkpoint_shaped("ministral3b", tmp_path / "tekken-only", ShapeOptions(tokenizer_json=False))
    assert not (tekken_only / "tokenizer.json").exists()
    from PIL import Image

    image = Image.new("RGB", (64, 48), (200, 30, 30))
    ids = []
    for path in (folder, tekken_only):
        loaded = load_model(str(path), device="cpu")
        inputs = chat_inputs(loaded.processor, [image], ["Is there a cat in the image?"])
        tokens = inputs["input_ids"][0].tolist()
        assert tokens.count(10) == inputs["image_sizes"][0].prod().item() // 28**2  # one [IMG] per merged 28-px patch
        ids.append(tokens)
    assert ids[0] == ids[1]


def test_fp8_checkpoint_on_a_capability_9_gpu_is_dequantized(basemodel, monkeypatch):
    """On H100/H200 transformers keeps FP8Linear layers; a later .to(dtype) would cast raw float8 values.
    The GPU is simulated (transformers asks torch.cuda for it); loading must still give weight x scale."""
    from safetensors import safe_open
    from transformers import Mistral3ForConditionalGeneration
    from transformers.integrations.finegrained_fp8 import FP8Linear

    folder = basemodel / CHECKPOINTS["ministral3b"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (9, 0))
    naive = Mistral3ForConditionalGeneration.from_pretrained(str(folder), dtype=torch.bfloat16)
    assert any(isinstance(m, FP8Linear) for m in naive.modules())  # the simulation reproduces the H100 path

    loaded = load_model(str(folder), device="cpu", dtype="bfloat16")
    assert not any(isinstance(m, FP8Linear) for m in loaded.model.modules())
    assert not getattr(loaded.model, "is_quantized", False)
    with safe_open(str(folder / "model.safetensors"), "pt") as stored:
        key = next(k for k in stored.keys() if k.endswith("layers.0.self_attn.q_proj.weight"))  # noqa: SIM118 (safe_open has no __iter__)
        reference = stored.get_tensor(key).float() * stored.get_tensor(key.replace(".weight", ".weight_scale_inv")).float()
    weight = loaded.family.decoder_layers(loaded.model)[0].self_attn.q_proj.weight
    assert weight.dtype == torch.bfloat16
    torch.testing.assert_close(weight.float(), reference, rtol=2**-8, atol=reference.abs().max().item() / FP8_MAX * 2**-8)


@pytest.mark.parametrize("name", ["qwen2b", "ministral3b"])
def test_evidence_is_never_injected_at_a_vision_token(name, basemodel, val_images):
    from hallbench.train.evidence import attach_evidence
    from hallbench.train.presets import evidence_config

    loaded = load_model(str(basemodel / CHECKPOINTS[name]), device="cpu")
    evidence = attach_evidence(loaded.model, loaded.family, evidence_config("ours"), loaded.processor)
    inputs = chat_inputs(loaded.processor, val_images[:2], ["Is there a star in the image?", "Please describe this image."])
    with torch.no_grad():
        loaded.model(**inputs)
    ids, text_mask = inputs["input_ids"], evidence.state.text_mask
    vision = torch.isin(ids, torch.tensor(_vision_ids(loaded)))
    specials = set(_vision_ids(loaded)) - {loaded.processor.image_token_id}
    assert any(int(i) in specials for i in ids.flatten())  # the markers are in the prompt
    assert not text_mask[vision].any()
    assert torch.equal(text_mask, inputs["attention_mask"].bool() & ~vision)
    image_tokens = (ids == loaded.processor.image_token_id).sum(-1)
    assert evidence.state.visual_mask.sum(-1).tolist() == image_tokens.tolist()  # V holds the image tokens only


def test_greedy_ignores_the_checkpoints_sampling_defaults(basemodel, val_images):
    """Qwen3-VL's generation_config samples (do_sample, temperature 0.7, top_k 20): greedy must stay greedy."""
    from hallbench.eval.engine import DecodingConfig, HFBackend, Sample

    loaded = load_model(str(basemodel / CHECKPOINTS["qwen2b"]), device="cpu")
    assert loaded.model.generation_config.do_sample is True
    backend = HFBackend("unused", DecodingConfig(max_new_tokens=4), loaded=loaded)
    sample = Sample("a", [Path("unused")], "Is there a star in the image?")
    answers = {tuple(backend.generate([sample], [[val_images[0]]], chunk_seed=seed)) for seed in (0, 1, 2)}
    assert len(answers) == 1
    inputs = chat_inputs(loaded.processor, [val_images[0]], ["Is there a star in the image?"])
    ids, expected = inputs, []
    with torch.no_grad():
        out = loaded.model.generate(**inputs, max_new_tokens=4, do_sample=False, top_k=None, temperature=None, top_p=None)
        for _ in range(4):  # greedy by hand: argmax of the logits at every step
            logits = loaded.model(**ids).logits[0, -1]
            token = int(logits.argmax())
            expected.append(token)
            ids = dict(ids)
            ids["input_ids"] = torch.cat([ids["input_ids"], torch.tensor([[token]])], 1)
            ids["attention_mask"] = torch.cat([ids["attention_mask"], torch.ones(1, 1, dtype=torch.long)], 1)
            ids["mm_token_type_ids"] = torch.cat([ids["mm_token_type_ids"], torch.zeros(1, 1, dtype=torch.long)], 1)
    assert out[0, -4:].tolist() == expected
    assert answers.pop()[0] == loaded.processor.decode(expected, skip_special_tokens=True)


# Qwen3-VL-4B is Qwen3-VL-2B's family at other widths (its shape is checked by the faster tests above): slow.
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "qwen4b" else n for n in NAMES])
def test_train_save_reload_evaluate_report(name, use_basemodel, shapes_dir, tmp_path):
    """The default path of the real study on each checkpoint shape, through the CLI."""
    from transformers import AutoProcessor

    from hallbench.data.pope_build import PopeBuildConfig, build_pope
    from hallbench.eval.engine import DecodingConfig
    from hallbench.eval.judge_server import start_judge_server
    from hallbench.eval.run import EvalConfig, run_eval
    from hallbench.report import run_report

    records = json.loads((shapes_dir / "train.json").read_text())[:8]
    data = tmp_path / "train.json"
    data.write_text(json.dumps(records))
    result = runner.invoke(
        app,
        ["train", "--model", name, "--variant", "ours", "--data", str(data), "--images", str(shapes_dir / "images"),
         "--output-root", str(tmp_path / "runs" / "train"), "--batch-size", "2", "--learning-rate", "1e-3",
         "--set", "max_steps=2", "--logging-steps", "1"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    run = next((tmp_path / "runs" / "train").iterdir())
    run_config = json.loads((run / "hallbench_config.json").read_text())
    assert run_config["model"]["source"] == "basemodel" and run_config["saved_dtype"] == "bfloat16"
    processor = AutoProcessor.from_pretrained(str(run))
    assert type(processor).__name__ == ("Qwen3VLProcessor" if name.startswith("qwen") else "PixtralProcessor")
    saved = json.loads((run / "config.json").read_text())
    assert "quantization_config" not in saved  # Ministral: trained dequantized, saved as plain bf16
    from safetensors import safe_open

    with safe_open(str(run / "model.safetensors"), "pt") as weights:
        assert {str(weights.get_tensor(k).dtype) for k in list(weights.keys())[:20]} == {"torch.bfloat16"}
    if name.startswith("qwen"):  # same dtype as the base: the run folder is the checkpoint's size
        base = use_basemodel / CHECKPOINTS[name] / "model.safetensors"
        assert (run / "model.safetensors").stat().st_size <= 1.05 * base.stat().st_size
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["global_step"] == 2 and len(summary["peak_host_rss_gb"]) == 1 and summary["peak_host_rss_gb"][0] > 0.1

    pope = tmp_path / "pope"
    build_pope(
        shapes_dir / "annotations" / "instances_val.json", pope, PopeBuildConfig(n_images=2, per_image=1), images_dir=shapes_dir / "images"
    )
    evals = tmp_path / "runs" / "eval"
    short = DecodingConfig(max_new_tokens=3, batch_size=2)
    run_eval(EvalConfig(bench="pope", data=pope, split="random", model=str(run), out=evals / "pope", decoding=short), progress=False)
    run_eval(EvalConfig(bench="chair", data=shapes_dir, model=str(run), out=evals / "chair", max_samples=2, decoding=short), progress=False)
    with start_judge_server() as judge:
        vqa = EvalConfig.from_flags(
            bench="vqa", data=shapes_dir / "eval_vqa.json", images=shapes_dir / "images", model=str(run), out=evals / "vqa",
            max_samples=4, judge_base_url=judge.base_url, judge_model="local", decoding=short,
        )  # fmt: skip
        run_eval(vqa, progress=False)
    pope_summary = json.loads((evals / "pope" / "summary.json").read_text())
    assert pope_summary["n_samples"] == 4 and pope_summary["n_errors"] == 0
    report = run_report(tmp_path / "runs", tmp_path / "report", n_resamples=20)
    table2 = (tmp_path / "report" / "table2.md").read_text()
    assert report is not None
    row = next(line for line in table2.splitlines() if "| Ours |" in line)
    assert row.startswith(f"| {run_config['model']['display_name']} |")  # Qwen3-VL-2B, Qwen3-VL-4B, Ministral-3-3B


def test_pixel_budget_sets_the_number_of_visual_tokens(basemodel, val_images):
    qwen = load_model(str(basemodel / CHECKPOINTS["qwen2b"]), device="cpu")
    default = chat_inputs(qwen.processor, val_images[:1], ["Is there a star?"])
    assert int((default["input_ids"] == 151655).sum()) == 64  # 128 px upscaled to 256 px by min_pixels 65536
    assert qwen.family.set_pixel_budget(qwen.processor, 4096, 4096) == {"min_pixels": 4096, "max_pixels": 4096}
    small = chat_inputs(qwen.processor, val_images[:1], ["Is there a star?"])
    assert int((small["input_ids"] == 151655).sum()) == 4  # 64 x 64 px: 4 x 4 patches, merged 2 x 2
    mistral = load_model(str(basemodel / CHECKPOINTS["ministral3b"]), device="cpu")
    assert mistral.family.set_pixel_budget(mistral.processor, None, 56 * 56) == {"longest_edge": 56}
    assert int((chat_inputs(mistral.processor, val_images[:1], ["?"])["input_ids"] == 10).sum()) == 4  # 56 px = 2 x 2 merged
    with pytest.raises(HallbenchError, match="never upscale"):
        mistral.family.set_pixel_budget(mistral.processor, 1024, None)


def test_system_prompt_replaces_the_templates_default(basemodel):
    from hallbench.eval.engine import chat_messages

    qwen = load_model(str(basemodel / CHECKPOINTS["qwen2b"]), device="cpu").processor
    mistral = load_model(str(basemodel / CHECKPOINTS["ministral3b"]), device="cpu").processor

    def render(processor, system):
        return processor.apply_chat_template(chat_messages(1, "Is there a cat?", system), add_generation_prompt=True)

    assert render(qwen, None).startswith("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Is there a cat?")
    assert render(qwen, "Be brief.").startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")
    assert "You are Ministral-3-3B-Instruct-2512" in render(mistral, None)  # the template's own default
    assert render(mistral, "Be brief.") == "<s>[SYSTEM_PROMPT]Be brief.[/SYSTEM_PROMPT][INST][IMG]Is there a cat?[/INST]"


# ---------------------------------------------------------------------------------------------
# Prompt snapshots (lmms-eval's prompt-stability idea): what each benchmark sends to each family


PROMPTS = Path(__file__).parent / "fixtures" / "prompts"


def _benchmark_prompts(shapes_dir, pope_dir) -> dict[str, str]:
    from hallbench.eval.run import EvalConfig, evaluation_samples, load_benchmark

    configs = {
        "pope": EvalConfig(bench="pope", data=pope_dir, out=Path("unused"), split="random"),
        "chair": EvalConfig(bench="chair", data=shapes_dir, out=Path("unused")),
        "vqa": EvalConfig(bench="vqa", data=shapes_dir / "eval_vqa.json", images=shapes_dir / "images", out=Path("unused")),
    }
    return {bench: evaluation_samples(cfg, load_benchmark(cfg))[0].prompt for bench, cfg in configs.items()}


def _snapshot(path: Path, text: str) -> None:
    import os

    if os.environ.get("HALLBENCH_UPDATE_SNAPSHOTS") == "1" or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        if os.environ.get("HALLBENCH_UPDATE_SNAPSHOTS") != "1":
            pytest.fail(f"{path} did not exist and was written; check it and commit it")
    assert text == path.read_text(encoding="utf-8"), (
        f"the rendered prompts differ from {path}: a prompt, a chat template or the message builder changed. "
        "If that is intended, bump the benchmark's version and re-run with HALLBENCH_UPDATE_SNAPSHOTS=1"
    )


@pytest.mark.parametrize("name", [*NAMES, "tiny-qwen", "tiny-ministral", "tiny-llava"])
def test_prompt_snapshots_per_benchmark_and_family(name, basemodel, shapes_dir, pope_dir):
    """The exact text each benchmark's first sample becomes after the family's chat template (real
    tokenizer files for the checkpoint-shaped folders): a change of a prompt, of transformers' template
    handling or of the message builder shows here, not as a silent shift of the numbers."""
    from hallbench.eval.engine import chat_messages

    loaded = load_model(str(basemodel / CHECKPOINTS[name]) if name in CHECKPOINTS else name)
    blocks = []
    for bench, prompt in _benchmark_prompts(shapes_dir, pope_dir).items():
        rendered = loaded.processor.apply_chat_template(chat_messages(1, prompt), add_generation_prompt=True)
        blocks.append(f"=== {bench} ({loaded.family.name}) ===\n{rendered}\n")
    _snapshot(PROMPTS / f"{name}.txt", "".join(blocks))


def test_prompt_snapshot_of_the_openai_backend_request(shapes_dir, pope_dir, monkeypatch):
    from PIL import Image

    from hallbench.eval.engine import DecodingConfig, OpenAIBackend, Sample

    monkeypatch.setenv("SNAPSHOT_KEY", "not-a-real-key")
    backend = OpenAIBackend("http://127.0.0.1:9/v1", "served-model", DecodingConfig(), key_env="SNAPSHOT_KEY")
    image = Image.new("RGB", (4, 4))
    requests = {}
    for bench, prompt in _benchmark_prompts(shapes_dir, pope_dir).items():
        messages = backend.request_messages(Sample("id", [], prompt, {}), [image])
        url = messages[0]["content"][0]["image_url"]["url"]
        assert url.startswith("data:image/png;base64,")
        messages[0]["content"][0]["image_url"]["url"] = "data:image/png;base64,<the image>"
        requests[bench] = messages
    _snapshot(PROMPTS / "openai_backend.json", json.dumps(requests, indent=2, ensure_ascii=False) + "\n")
