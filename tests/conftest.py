"""Shared fixtures: a small shapes world and the tiny models, built once per test session."""

from __future__ import annotations

import os
import tempfile

import pytest

# Tests never touch the network: any accidental hub access fails fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The CLI's rich consoles fix their width at import when COLUMNS is set (pytest-xdist's workers set
# 80): without it they follow each CliRunner call's env={"COLUMNS": ...}, as in a plain pytest run.
os.environ.pop("COLUMNS", None)
os.environ.pop("LINES", None)
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers on two cores: one intra-op thread each (and in the CLIs and ranks they start), so
    # that the workers' OpenMP threads do not oversubscribe the cores and spin against each other.
    os.environ["OMP_NUM_THREADS"] = "1"
# Caches (CHAIR ground truth) go to a fresh folder, never the user's ~/.cache.
os.environ["HALLBENCH_CACHE_DIR"] = tempfile.mkdtemp(prefix="hallbench-test-cache-")

from hallbench.models.registry import MODEL_REGISTRY  # noqa: E402 - cheap (no torch); after the offline settings

TINY_MODELS = tuple(name for name, spec in MODEL_REGISTRY.items() if spec.tiny)  # one per family: tiny-qwen, ...


@pytest.fixture(scope="session")
def shapes_config():
    from hallbench.data.shapes import ShapesConfig

    return ShapesConfig(seed=0, n_train=40, n_val=20)


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory, shapes_config):
    from hallbench.data.shapes import generate_shapes

    return generate_shapes(shapes_config, tmp_path_factory.mktemp("shapes"))


@pytest.fixture(scope="session")
def tiny_models():
    """name -> (model, processor), built once; tests must not modify them in place."""
    from hallbench.models import build_tiny

    return {name: build_tiny(name) for name in TINY_MODELS}


@pytest.fixture(scope="session")
def val_images(shapes_dir):
    from hallbench.data.formats import load_image

    return [load_image(p) for p in sorted((shapes_dir / "images").glob("shapes_val_*.png"))[:4]]


@pytest.fixture(scope="session")
def pope_dir(shapes_dir, tmp_path_factory):
    """POPE splits of 5 val images, 2 questions per image and answer."""
    from hallbench.data.pope_build import PopeBuildConfig, build_pope

    out = tmp_path_factory.mktemp("pope")
    build_pope(
        shapes_dir / "annotations" / "instances_val.json", out, PopeBuildConfig(n_images=5, per_image=2), images_dir=shapes_dir / "images"
    )
    return out


@pytest.fixture
def interrupt_training_at(monkeypatch):
    """``interrupt_training_at(step)``: training raises KeyboardInterrupt (a Ctrl-C) before step ``step``'s
    forward pass, until ``monkeypatch.undo()``; the checkpoints saved before it are what a resume finds."""
    from hallbench.train import trainer as trainer_module

    original = trainer_module.EvidenceTrainer.compute_loss

    def at(step: int) -> None:
        def interrupted(self, *args, **kwargs):
            if self.state.global_step + 1 == step:
                raise KeyboardInterrupt("simulated Ctrl-C")
            return original(self, *args, **kwargs)

        monkeypatch.setattr(trainer_module.EvidenceTrainer, "compute_loss", interrupted)

    return at
