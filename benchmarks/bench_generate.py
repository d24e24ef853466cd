"""Generation engine throughput vs a plain per-sample ``model.generate`` loop, same model, same questions.

    python benchmarks/bench_generate.py [--model tiny-qwen] [--n 96] [--max-new-tokens 16]
    python benchmarks/bench_generate.py --model qwen2b-shape --n 64   # on a GPU: full-size Qwen3-VL-2B shape, bf16

``*-shape`` models are the full-size checkpoint-shaped folders (``hallbench.models.checkpoint_shapes``:
published configs, real tokenizer and processor, random weights), loaded like a download.

Checks that the engine's greedy answers equal the baseline's at every batch size, prints samples/s
and the speed-up, and writes benchmarks/results/bench_generate.json. Target: >= 3x at batch 16 on
2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from hallbench.data.formats import load_image
from hallbench.data.shapes import ShapesConfig, generate_shapes
from hallbench.eval.engine import DecodingConfig, HFBackend, Sample, generate_predictions
from hallbench.models import chat_inputs, load_model
from hallbench.models.checkpoint_shapes import SHAPE_NAMES, build_full_size_in_subprocess

RESULTS = Path(__file__).parent / "results" / "bench_generate.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-qwen")
    parser.add_argument("--n", type=int, default=96, help="questions")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")

    work = Path(tempfile.mkdtemp(prefix="bench_generate_"))
    generate_shapes(ShapesConfig(n_train=0, n_val=args.n), work / "shapes")
    images = sorted((work / "shapes" / "images").glob("*.png"))
    prompts = ["Is there a star in the image?", "Please describe this image in detail.", "What objects are in the image?"]
    samples = [Sample(f"q{i}", [images[i]], prompts[i % 3]) for i in range(args.n)]
    model = args.model
    if model in SHAPE_NAMES:
        model = str(build_full_size_in_subprocess(SHAPE_NAMES[model], work / model))
    loaded = load_model(model, device=device)
    # min_new_tokens makes every answer the same length, so both sides do the same decoding work.
    gen_kwargs = {"max_new_tokens": args.max_new_tokens, "min_new_tokens": args.max_new_tokens, "do_sample": False}

    start = time.perf_counter()
    baseline = []
    for sample in samples:
        inputs = chat_inputs(loaded.processor, [load_image(sample.images[0])], [sample.prompt]).to(device)
        with torch.inference_mode():
            output = loaded.model.generate(**inputs, **gen_kwargs)
        baseline.append(loaded.processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0])
    baseline_rate = args.n / (time.perf_counter() - start)
    print(f"baseline per-sample generate loop: {baseline_rate:.1f} samples/s")

    loaded.model.generation_config.min_new_tokens = args.max_new_tokens
    results = {"baseline_samples_per_s": baseline_rate, "engine": {}}
    for batch_size in (1, 8, 16):
        decoding = DecodingConfig(max_new_tokens=args.max_new_tokens, batch_size=batch_size)
        out = work / f"engine_b{batch_size}"
        out.mkdir()
        start = time.perf_counter()
        records = generate_predictions(samples, HFBackend(model, decoding, loaded=loaded), decoding, out, lambda s, a: {}, progress=False)
        rate = args.n / (time.perf_counter() - start)
        same = [r["prediction"] for r in records] == baseline
        results["engine"][str(batch_size)] = {"samples_per_s": rate, "speedup": rate / baseline_rate, "same_outputs": same}
        print(f"engine batch {batch_size:2d}: {rate:6.1f} samples/s  speed-up x{rate / baseline_rate:.2f}  same outputs: {same}")

    results.update(
        model=args.model,
        n=args.n,
        max_new_tokens=args.max_new_tokens,
        target="engine batch 16 >= 3x the per-sample loop",
        target_met=results["engine"]["16"]["speedup"] >= 3.0,
        machine={
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
    )
    results["device"] = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
