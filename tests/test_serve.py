"""A saved run folder serves as it is: ``transformers serve`` (the stand-in for vLLM) on 127.0.0.1 answers
``--backend openai`` exactly as the ``hf`` backend answers from the same folder.

The model is the checkpoint-shaped Qwen3-VL-2B (real tokenizer, chat template and processor files),
fine-tuned as Base for a few steps to name the colour of an image, so that an answer shows whether
the image reached the model: a server that lost the image (a run folder naming a processor class
other tools cannot build) answers every image alike.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from hallbench.eval.engine import DecodingConfig
from hallbench.eval.run import EvalConfig, run_eval
from hallbench.models.checkpoint_shapes import build_checkpoint_shaped
from hallbench.train.config import TrainConfig
from hallbench.train.run import run_train

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}


def _colour_world(root: Path) -> tuple[Path, Path, Path]:
    images = root / "images"
    images.mkdir(parents=True)
    train, questions = [], []
    for colour, rgb in COLOURS.items():
        for k in range(4):
            name = f"{colour}{k}.png"
            shade = tuple(min(255, max(0, v + 12 * (k - 2))) for v in rgb)
            Image.new("RGB", (64, 64), shade).save(images / name)
            question = "What color is the image?"
            train.append({"id": f"{colour}{k}", "image": name, "conversations": [
                {"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": f"{colour}."}]})  # fmt: skip
            questions.append({"question_id": f"{colour}{k}", "image": name, "text": question, "label": "yes"})
    (root / "train.json").write_text(json.dumps(train))
    (root / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    return root / "train.json", images, root / "questions.jsonl"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_serving(url: str, server: subprocess.Popen, log: Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"transformers serve exited with {server.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/models", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError("transformers serve did not answer within the timeout")


def _predictions(out: Path) -> dict[str, str]:
    return {r["id"]: r["prediction"] for r in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())}


@pytest.mark.slow  # about 45 s: a model server in a subprocess; the openai backend itself is tested against real HTTP servers in test_engine.py
def test_a_saved_base_run_serves_with_transformers_serve(tmp_path, monkeypatch):
    data, images, questions = _colour_world(tmp_path / "world")
    base = build_checkpoint_shaped("qwen2b", tmp_path / "Qwen3-VL-2B-Instruct")
    trained = run_train(
        TrainConfig(
            model=str(base), variant="base", data=data, images=images, output_dir=tmp_path / "run", learning_rate=3e-3,
            per_device_train_batch_size=4, min_pixels=4096, max_pixels=4096, training_args={"max_steps": 30},
        ),
        progress=False,
    )  # fmt: skip
    run = trained.path
    decoding = DecodingConfig(max_new_tokens=4, batch_size=6)
    common = {"bench": "pope", "data": questions, "images": images, "split": "all", "decoding": decoding}
    run_eval(EvalConfig(**common, model=str(run), out=tmp_path / "hf"), progress=False)
    by_hf = _predictions(tmp_path / "hf")
    assert by_hf == {qid: f"{qid.split('/')[-1].rstrip('0123')}." for qid in by_hf}  # the model names each image's colour

    port = _free_port()
    command = [str(Path(sys.executable).parent / "transformers"), "serve", str(run), "--host", "127.0.0.1", "--port", str(port)]
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen([*command, "--device", "cpu"], stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_until_serving(f"http://127.0.0.1:{port}/v1", server, tmp_path / "serve.log")
        monkeypatch.setenv("OPENAI_API_KEY", "unused-by-a-local-server")
        served = EvalConfig(**common, backend="openai", base_url=f"http://127.0.0.1:{port}/v1", api_model=str(run), out=tmp_path / "served")
        run_eval(served, progress=False)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    assert _predictions(tmp_path / "served") == by_hf
