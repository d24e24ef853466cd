"""The shipped training recipes (recipes/*.yaml): each loads, names its own launch command, and every
model x variant x seed run it stands for is a valid training configuration with the seed's settings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hallbench.train.config import TrainConfig, load_recipe
from hallbench.train.presets import ABLATION_INJECTION, ABLATION_LOSS, TABLE2, expand_variants
from hallbench.train.run import expand_models, run_folder

RECIPES = sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*.yaml"))


def test_the_paper_runs_have_recipes():
    assert [p.name for p in RECIPES] == [
        f"{kind}_{model}.yaml" for kind in ("ablations", "table2") for model in ("ministral3b", "qwen2b", "qwen4b")
    ]


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_a_recipe_loads_and_names_its_launch_command(path):
    header = [line for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("#")]
    launch = [line for line in header if "hallbench train" in line]
    assert launch and f"--config recipes/{path.name}" in launch[0], header
    recipe = load_recipe(path)
    kind, model = path.stem.split("_")
    assert expand_models(recipe.pop("model")) == [model]
    variants = expand_variants(recipe.pop("variant"))
    assert variants == (list(TABLE2) if kind == "table2" else list(ABLATION_INJECTION + ABLATION_LOSS))
    # The seed's settings (its scripts: lr 1e-5, 3 epochs, bf16, 2 checkpoints kept, logging every 2 steps).
    assert (recipe["learning_rate"], recipe["num_train_epochs"], recipe["precision"]) == (1e-5, 3, "bf16")
    assert (recipe["save_total_limit"], recipe["logging_steps"], recipe["deepspeed"]) == (2, 2, "zero2")
    folders = set()
    for variant in variants:
        for seed in (0, 1, 2):
            cfg = TrainConfig(model=model, variant=variant, seed=seed, seed_in_folder=True, **recipe)  # validates every setting
            folders.add(run_folder(cfg))
    assert len(folders) == 3 * len(variants)  # one folder per variant and seed
    assert all(re.search(r"_seed[012]$", f.name) for f in folders)
