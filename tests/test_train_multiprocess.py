"""Two processes on this machine (jax.distributed over localhost, 4 CPU devices each) train together on an
fsdp=8 mesh, each feeding its half of every global batch; their losses equal those of one process with 8 devices.
Slow: three processes each compile the tiny model's train step.

Run as a script, this file is one such worker: `python tests/test_train_multiprocess.py OUT_JSON`, with the
JAX_* variables of `llavao1_jax.train.mesh.initialize_distributed` in the environment."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

STEPS = 4
ROOT = Path(__file__).resolve().parents[1]


def worker(out: str) -> None:
    import jax
    import numpy as np

    from llavao1_jax.train import data
    from llavao1_jax.train import mesh as train_mesh
    from llavao1_jax.train.program import build_program
    from llavao1_jax.train.state import init_train_state
    from tests.test_train_step import CHUNK, batches, run_config, tiny_model_config

    train_mesh.initialize_distributed()
    config, cfg = run_config("1x8x1"), tiny_model_config()
    mesh, rules = train_mesh.mesh_from_config(config), train_mesh.rules_from_config(config)
    program = build_program(config, cfg, mesh, rules, steps_per_epoch=4, total_steps=STEPS)
    state = init_train_state(config, cfg, program.tx, program.shardings, mesh, rules)
    rows = config.batch_size // jax.process_count()
    mine = slice(jax.process_index() * rows, (jax.process_index() + 1) * rows)
    losses = []
    with jax.set_mesh(mesh):
        for b in batches(STEPS):
            local = {k: v[mine] for k, v in b.items()}
            state, m = program.train_step(state, data.device_batch(local, program.batch_shardings, CHUNK))
            losses.append(float(m["loss"]))
    norm = float(jax.jit(lambda p: sum(jax.numpy.sum(x * x) for x in jax.tree.leaves(p)))(state.params))
    if jax.process_index() == 0:
        Path(out).write_text(json.dumps({"losses": losses, "params_sq_norm": norm,
                                         "processes": jax.process_count(), "devices": len(jax.devices()),
                                         "local_devices": len(jax.local_devices())}))
    np.testing.assert_array_equal(np.isfinite(losses), True)


def _launch(out, devices, env):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(ROOT), JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo", **env)
    return subprocess.Popen([sys.executable, __file__, str(out)], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
    address = f"localhost:{_free_port()}"
    pair = [_launch(tmp_path / "two.json", 4, dict(JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES="2",
                                                    JAX_PROCESS_ID=str(i))) for i in range(2)]
    single = _launch(tmp_path / "one.json", 8, {})
    for p in (*pair, single):
        output, _ = p.communicate(timeout=1800)
        assert p.returncode == 0, output[-3000:]
    two, one = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("two", "one"))
    assert (two["processes"], two["devices"], two["local_devices"]) == (2, 8, 4)
    assert (one["processes"], one["devices"]) == (1, 8)
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-6)
    assert two["params_sq_norm"] == pytest.approx(one["params_sq_norm"], rel=1e-6)


if __name__ == "__main__":
    worker(sys.argv[1])
