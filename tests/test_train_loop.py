"""The training loop end to end on the tiny config (in process, 8 fake devices): what the workdir gets, the held-out
loss and sample entries, and the clean stop at a non-finite step. Slow: each run compiles the tiny model's step."""
import json

import numpy as np
import pytest

from configs.sft_tiny import get_config
from llavao1_jax.data import build
from llavao1_jax.train.loop import NonFiniteLossError, train


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tfds")
    build.build_synthetic_reasoning(path, num_train=16, num_test=8, seed=0, image_size=56)
    return path


def _config(data_dir, **changes):
    config = get_config()
    config.data.data_dir = str(data_dir)
    config.update_from_flattened_dict(changes)
    return config


@pytest.mark.slow
def test_run_writes_metrics_events_checkpoints_and_export(tmp_path, data_dir):
    config = _config(data_dir, total_steps=2, log_every=1, checkpoint_every=1, keep_checkpoints=1, eval_every=2,
                     eval_batches=1, sample_every=2, sample_max_new_tokens=4, peak_flops_per_device=1e12)
    train(config, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["total_steps"] == 2
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:
        assert {"loss", "learning_rate", "tokens_per_second", "grad_norm", "step_time", "mfu"} <= r.keys()
        assert np.isfinite(r["loss"]) and r["tokens_per_second"] > 0 and 0 < r["mfu"]
    (eval_record,) = [r for r in records if "eval_loss" in r]
    assert eval_record["step"] == 2 and np.isfinite(eval_record["eval_loss"])
    (sample,) = [r for r in records if "sample" in r]
    assert isinstance(sample["sample"], str)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2"]  # keep_checkpoints=1
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"} <= {
        p.name for p in (tmp_path / "hf").iterdir()}


@pytest.mark.slow
def test_non_finite_step_stops_and_names_it(tmp_path, data_dir):
    # Adam's first update moves every parameter by about the learning rate: 1e30 overflows the second step.
    config = _config(data_dir, total_steps=4, checkpoint_every=1, export_hf=True, async_checkpointing=False)
    config.optim.learning_rate, config.optim.clip_norm = 1e30, 0.0
    with pytest.raises(NonFiniteLossError, match=r"step 2: loss .*; stopped without applying it. The last good "
                                                 r"checkpoint is step 1"):
        train(config, tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1"]
    assert not (tmp_path / "hf").exists()
