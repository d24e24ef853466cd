"""Training step time and peak memory of every variant relative to ``base``: same model, batch and data.

    python benchmarks/bench_train.py                                  # tiny-qwen on the CPU
    python benchmarks/bench_train.py --model tiny-ministral
    python benchmarks/bench_train.py --model medium-qwen --batch-size 4 --steps 6 --warmup 2 --rounds 1   # ~100M parameters, CPU
    python benchmarks/bench_train.py --model qwen2b-shape --batch-size 4 --steps 20   # on a GPU: Qwen3-VL-2B, random weights
    python benchmarks/bench_train.py --model qwen2b-shape --lora-rank 16 --variants base,ours --batch-size 1 --steps 1 --warmup 0 --rounds 1 --device cpu

``*-shape`` models (qwen2b-shape, qwen4b-shape, ministral3b-shape) are the checkpoint-shaped folders
of ``hallbench.models.checkpoint_shapes`` at full width and depth: the published configs, real
tokenizer and processor, random weights (Ministral's in FP8, loaded dequantized as hallbench always
does), built once in a temporary folder and loaded by every worker with ``load_model``, as a user's
download would be. On a GPU the weights are loaded in bf16 and the step runs in bf16; the script
also reports tokens/s and MFU (6 x parameters x tokens / step time / ``--peak-tflops``).

Each variant runs in its own process (so that peak memory is its own) through the real training
path: ``EvidenceTrainer`` with the AdamW optimizer, the collator and the shapes-world conversations
(pre-tokenised, so that image decoding is not timed). Step time is the median over the measured
steps after warm-up; the variants are run in interleaved rounds and the best median per variant
kept, so that drift on a shared machine hits every variant alike. Peak memory is
``torch.cuda.max_memory_allocated`` on a GPU; on the CPU it is the growth of the process's peak
resident set over its size before the first step (so the Python/torch baseline does not dilute
the ratios). Targets: ``ours`` <= 1.15x base step time and <= 1.10x base peak memory.
Results: benchmarks/results/bench_train_<model>_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hallbench.models.checkpoint_shapes import SHAPE_NAMES as SHAPES  # cheap: no torch

RESULTS = Path(__file__).parent / "results"
TARGETS = {"ours": {"step_time": 1.15, "peak_memory": 1.10}}


def build(model_name: str, device: str, shape_dir: str | None = None, dtype: str = "float32"):
    """(model, processor, family) with random weights."""
    from hallbench.models import build_tiny, get_family, load_model
    from hallbench.models.tiny import TinySize

    if model_name == "medium-qwen":
        # ~100M parameters: big enough for FLOPs rather than per-op overhead to dominate on a CPU.
        size = TinySize(
            hidden_size=1024, num_layers=8, num_heads=16, num_kv_heads=8, intermediate_size=3072, vision_hidden_size=256, image_size=224
        )
        model, processor = build_tiny("tiny-qwen", size)
        return model.to(device), processor, get_family("qwen3_vl")
    if model_name in SHAPES:
        loaded = load_model(str(shape_dir), device=device, dtype=dtype)
        return loaded.model, loaded.processor, loaded.family
    model, processor = build_tiny(model_name)
    family = get_family("qwen3_vl" if "qwen" in model_name else "mistral3")
    return model.to(device), processor, family


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(args: argparse.Namespace) -> None:
    """One variant: train warmup + steps steps, print a JSON line with the step times and peak memory."""
    import torch
    from transformers import TrainerCallback, TrainingArguments

    from hallbench.data.shapes import ShapesConfig, generate_shapes
    from hallbench.train.data import Collator, ConversationDataset
    from hallbench.train.evidence import attach_evidence
    from hallbench.train.presets import evidence_config
    from hallbench.train.trainer import EvidenceTrainer

    device = args.device
    on_gpu = device.startswith("cuda")
    bf16 = on_gpu and torch.cuda.is_bf16_supported()
    model, processor, family = build(args.model, device, args.shape_dir, "bfloat16" if bf16 and args.model in SHAPES else "float32")
    world = generate_shapes(ShapesConfig(seed=0, n_train=24, n_val=0), Path(tempfile.mkdtemp(prefix="bench_train_")))
    dataset = ConversationDataset(world / "train.json", world / "images", processor, family, 4096)
    encoded = [dataset[i] for i in range(min(len(dataset), 64))]
    torch.manual_seed(0)
    cfg = evidence_config(args.worker)
    evidence = attach_evidence(model, family, cfg, processor)
    family.vision_tower(model).requires_grad_(False)
    if args.lora_rank:
        from peft import LoraConfig, get_peft_model

        # As hallbench train --lora-rank: the language model's linear layers; evidence trained in full.
        lora = LoraConfig(
            r=args.lora_rank, lora_alpha=2 * args.lora_rank,
            target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
        )  # fmt: skip
        model = get_peft_model(model, lora)
        if evidence is not None:
            model.get_base_model().evidence.requires_grad_(True)
    model.train()

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def _sync(self) -> None:
            if device.startswith("cuda"):
                torch.cuda.synchronize()

        def on_step_begin(self, *a, **k):
            self._sync()
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            self._sync()
            self.times.append(time.perf_counter() - self.start)

    timer = StepTimer()
    training_args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="bench_train_out_"), max_steps=args.warmup + args.steps, learning_rate=1e-5,
        per_device_train_batch_size=args.batch_size, bf16=bf16, save_strategy="no",
        logging_steps=10**6, report_to=[], use_cpu=not on_gpu, disable_tqdm=True, dataloader_num_workers=0, seed=0,
    )  # fmt: skip
    trainer = EvidenceTrainer(
        model=model, args=training_args, train_dataset=encoded, data_collator=Collator(processor.tokenizer.pad_token_id, with_image_ids=cfg.lambda_ctr > 0),
        callbacks=[timer], evidence=evidence, evidence_cfg=cfg,
    )  # fmt: skip
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    rss_before = _rss_mb()
    trainer.train()
    peak = torch.cuda.max_memory_allocated() / 2**20 if on_gpu else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_before
    measured = timer.times[args.warmup :]
    step_time = statistics.median(measured)
    tokens = statistics.mean(len(e.input_ids) for e in encoded) * args.batch_size
    parameters = sum(p.numel() for p in model.parameters())
    flops = 6 * parameters * tokens / step_time  # the usual dense estimate; attention and the frozen tower's share are left out
    print(
        json.dumps(
            {
                "variant": args.worker,
                "step_time_s": step_time,
                "step_times_s": measured,
                "peak_memory_mb": peak,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "tokens_per_step": tokens,
                "tokens_per_s": tokens / step_time,
                "mfu": flops / (args.peak_tflops * 1e12) if on_gpu else None,
                "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
                "parameters": parameters,
                "evidence_parameters": sum(p.numel() for p in evidence.modules.parameters()) if evidence else 0,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        default="tiny-qwen",
        help="tiny-qwen, tiny-ministral, medium-qwen (~100M, CPU), qwen2b-shape, qwen4b-shape, ministral3b-shape",
    )
    parser.add_argument("--lora-rank", type=int, default=0, help="LoRA on the language model (as hallbench train --lora-rank); 0 = full")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak for MFU (H100/H200 SXM: 989)")
    parser.add_argument(
        "--out", type=Path, default=None, help="results JSON (default: benchmarks/results/bench_train_<model>[_loraR]_<device>.json)"
    )
    parser.add_argument("--shape-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--variants", default="base,m,ma,ours")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30, help="measured steps per round")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the best median per variant is kept")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.worker:
        worker(args)
        return

    variants = [v.strip() for v in args.variants.split(",")]
    if variants[0] != "base":
        variants = ["base", *[v for v in variants if v != "base"]]
    extra: list[str] = []
    if args.model in SHAPES:
        shape_dir = Path(tempfile.mkdtemp(prefix="bench_train_shape_")) / args.model
        started = time.perf_counter()
        from hallbench.models.checkpoint_shapes import build_full_size_in_subprocess

        build_full_size_in_subprocess(SHAPES[args.model], shape_dir)
        print(f"built {shape_dir} in {time.perf_counter() - started:.0f} s")
        extra = ["--shape-dir", str(shape_dir)]
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for round_ in range(args.rounds):
        for variant in variants:
            command = [sys.executable, __file__, *sys.argv[1:], *extra, "--worker", variant, "--device", args.device]
            proc = subprocess.run(command, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"{variant} failed:\n{proc.stderr[-3000:]}")
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            runs[variant].append(result)
            mfu = f"  MFU {result['mfu']:.3f}" if result.get("mfu") is not None else ""
            print(
                f"round {round_ + 1} {variant:>5}: {result['step_time_s'] * 1000:8.1f} ms/step  peak {result['peak_memory_mb']:8.1f} MB"
                f"  peak RSS {result['peak_rss_mb'] / 1024:6.2f} GB{mfu}"
            )

    best = {v: min(rs, key=lambda r: r["step_time_s"]) for v, rs in runs.items()}
    peak = {v: min(r["peak_memory_mb"] for r in rs) for v, rs in runs.items()}
    base_time, base_peak = best["base"]["step_time_s"], peak["base"]
    summary = {}
    print(f"\n{'variant':>8} {'ms/step':>9} {'x base':>7} {'peak MB':>9} {'x base':>7}")
    for v in variants:
        time_ratio = best[v]["step_time_s"] / base_time
        memory_ratio = peak[v] / base_peak
        summary[v] = {
            "step_time_s": best[v]["step_time_s"],
            "step_time_ratio": time_ratio,
            "peak_memory_mb": peak[v],
            "peak_memory_ratio": memory_ratio,
            "evidence_parameters": best[v]["evidence_parameters"],
            "parameters": best[v]["parameters"],
            "trainable_parameters": best[v]["trainable_parameters"],
            "peak_rss_gb": max(r["peak_rss_mb"] for r in runs[v]) / 1024,
            "tokens_per_s": best[v]["tokens_per_s"],
            "mfu": best[v]["mfu"],
        }
        print(f"{v:>8} {best[v]['step_time_s'] * 1000:9.1f} {time_ratio:7.3f} {peak[v]:9.1f} {memory_ratio:7.3f}")
    checks = {
        v: {
            "step_time": summary[v]["step_time_ratio"] <= t["step_time"],
            "peak_memory": summary[v]["peak_memory_ratio"] <= t["peak_memory"],
        }
        for v, t in TARGETS.items()
        if v in summary
    }
    print(f"targets {TARGETS}: {checks}")
    import torch

    device_name = (
        torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"
    )
    RESULTS.mkdir(exist_ok=True)
    lora = f"_lora{args.lora_rank}" if args.lora_rank else ""
    out = args.out or RESULTS / f"bench_train_{args.model}{lora}_{'gpu' if args.device.startswith('cuda') else 'cpu'}.json"
    out.write_text(
        json.dumps(
            {
                "model": args.model,
                "device": device_name,
                "batch_size": args.batch_size,
                "lora_rank": args.lora_rank,
                "steps": args.steps,
                "warmup": args.warmup,
                "rounds": args.rounds,
                "memory_measure": "cuda max_memory_allocated" if args.device.startswith("cuda") else "peak RSS growth during training",
                "variants": summary,
                "targets": TARGETS,
                "meets_targets": checks,
                "runs": runs,
                "torch": torch.__version__,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
