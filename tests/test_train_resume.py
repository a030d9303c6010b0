"""Exact resume: a run killed with SIGKILL right after a checkpoint and restarted in the same workdir ends with the
parameters and losses of an uninterrupted run, bit for bit (CPU, 2 devices, the real CLI on the synthetic set).
Slow: three runs of `python -m llavao1_jax.train`, a few minutes on 2 cores."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

from llavao1_jax.data import build

STEPS, EVERY = 8, 3


def _command(workdir, data_dir):
    return [sys.executable, "-m", "llavao1_jax.train", "--config", "configs/sft_tiny.py", "--workdir", str(workdir),
            f"--config.total_steps={STEPS}", f"--config.checkpoint_every={EVERY}", "--config.log_every=1",
            "--config.batch_size=4", "--config.mesh.fsdp=2", f"--config.data.data_dir={data_dir}"]


def _env():
    return dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")


def _losses(workdir) -> dict[int, float]:
    """The last logged loss of every step (a resumed run logs some steps twice)."""
    out = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            out[record["step"]] = record["loss"]
    return out


@pytest.mark.slow
def test_sigkill_after_checkpoint_then_restart_is_exact(tmp_path):
    data_dir = tmp_path / "data"
    build.build_synthetic_reasoning(data_dir, num_train=32, num_test=4, seed=0, image_size=56)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(_command(straight, data_dir), env=_env(), check=True, timeout=1800, capture_output=True)

    process = subprocess.Popen(_command(killed, data_dir), env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    first = killed / "checkpoints" / str(EVERY)
    while not first.exists() and process.poll() is None:  # orbax renames the finished checkpoint into place
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert first.exists() and not (killed / "checkpoints" / str(STEPS)).exists()
    assert not (killed / "hf").exists()

    resumed = subprocess.run(_command(killed, data_dir), env=_env(), check=True, timeout=1800, capture_output=True,
                             text=True)
    assert f"resumed from {killed / 'checkpoints'}" in resumed.stdout

    want, got = _losses(straight), _losses(killed)
    assert sorted(want) == sorted(got) == list(range(1, STEPS + 1))
    assert got == want  # the JSON floats, bit for bit
    a, b = load_file(straight / "hf" / "model.safetensors"), load_file(killed / "hf" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
