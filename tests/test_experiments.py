"""The experiments at a reduced size: each writes its table, results.json and plot, holding numbers."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def shrink(config):
    """A few training steps and questions, tiny decoding budgets."""
    config.total_steps, config.checkpoint_every = 2, 2
    config.data.num_train, config.data.num_test = 16, 2
    config.evaluation.batch_size = 2
    config.evaluation.search.max_stage_tokens = 4
    config.evaluation.search.judge_max_tokens = 3
    return config


def assert_plot(path: Path):
    with Image.open(path) as image:
        assert image.size[0] > 300 and np.asarray(image.convert("L")).std() > 10


@pytest.mark.slow  # three main-job processes (about 4 minutes on 2 cores)
def test_structure_ablation(tmp_path):
    script = load(ROOT / "experiments" / "structure_ablation.py", "structure_ablation")
    spec = f"{ROOT / 'configs' / 'structure_ablation.py'}:steps=2,questions=2,train=16,stage_tokens=4"
    rows = script.run(spec, tmp_path)
    assert list(rows) == ["direct", "untagged", "tagged"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == rows
    assert all(0.0 <= r["accuracy"] <= 100.0 for r in rows.values())
    assert rows["direct"]["format_validity"] is None and 0.0 <= rows["tagged"]["format_validity"] <= 100.0
    assert (tmp_path / "table.md").read_text().count("\n") == 5
    assert_plot(tmp_path / "accuracy.png")


@pytest.mark.slow  # a training run and seven evaluation points (about 3 minutes on 2 cores)
def test_inference_scaling(tmp_path):
    config = shrink(load(ROOT / "configs" / "inference_scaling.py", "scaling_config").get_config("seeds=2"))
    config.scaling.ns, config.scaling.searches, config.scaling.judges = (1, 2), ("stage",), ("logprob",)
    script = load(ROOT / "experiments" / "inference_scaling.py", "inference_scaling")
    rows = script.run(config, tmp_path)
    series = {(r["series"], r["n"]) for r in rows}
    assert series == {("greedy", 1), ("sample", 1), ("swires/logprob", 1), ("stage/logprob", 1),
                      ("stage/logprob", 2)}
    for r in rows:
        assert r["seeds"] == (1 if r["series"] == "greedy" else 2)
        assert 0.0 <= r["accuracy"] <= 100.0 and r["accuracy_std"] >= 0.0 and r["tokens_per_question"] > 0
    stage = {r["n"]: r for r in rows if r["series"] == "stage/logprob"}
    assert stage[2]["tokens_per_question"] > stage[1]["tokens_per_question"]
    assert json.loads((tmp_path / "results.json").read_text()) == rows
    assert_plot(tmp_path / "scaling.png")
