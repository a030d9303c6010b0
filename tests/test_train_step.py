"""The sharded train step: the same losses and parameters on every mesh and with gradient accumulation, and the
non-finite guard. A tiny model with a 512-token vocabulary on random batches with one 4-tile image per row.

The default run compiles the step once (one device); the layouts are slow (one compilation each, 1.5-6 minutes
apiece on 2 shared cores)."""
import dataclasses

import jax
import numpy as np
import pytest

from configs.sft_tiny import get_config
from llavao1_jax.model import preset
from llavao1_jax.train import data
from llavao1_jax.train import mesh as train_mesh
from llavao1_jax.train.program import build_program
from llavao1_jax.train.state import init_train_state

VOCAB, BATCH, SEQ, CHUNK, STEPS = 512, 8, 32, 8, 10
# Adam divides by sqrt(v) + eps: with the default 1e-8 an entry whose gradient is rounding noise (a rarely seen
# embedding row) moves by the whole learning rate in a direction the summation order sets, so the layouts' runs
# compare parameters with eps 1e-4, which keeps such entries still and moves every entry with a real gradient
LAYOUT_EPS = 1e-4


def tiny_model_config():
    """The tiny model with a small vocabulary, its hidden states constrained by the trainer's sharding rules."""
    cfg = preset("tiny", activation_rules=train_mesh.rules_from_config(get_config()))
    return cfg.replace(text=dataclasses.replace(cfg.text, vocab_size=VOCAB), image_token_index=VOCAB)


def run_config(mesh_shape: str, grad_accum: int = 1, eps: float | None = None):
    config = get_config()
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = map(int, mesh_shape.split("x"))
    config.batch_size, config.grad_accum, config.loss.chunk_size = BATCH, grad_accum, CHUNK
    config.optim.learning_rate = 1e-2
    if eps is not None:
        config.optim.eps = eps
    return config


def batches(count=STEPS):
    cfg = tiny_model_config()
    out = []
    for i in range(count):
        b = data.random_batch(cfg, BATCH, SEQ, supervised_fraction=0.25 + 0.05 * (i % 4), seed=i)
        b["attention_mask"][i % BATCH, SEQ - 5:] = 0  # some right padding
        b["labels"][i % BATCH, SEQ - 5:] = -100
        out.append(b)
    return out


def train_steps(mesh_shape: str, grad_accum: int = 1, *, initial=None, eps: float | None = None):
    """Losses of STEPS steps, the final and the initial train state (host numpy) and the program; `initial`: a
    host train state to start from (else a sharded initialisation on this mesh); `eps`: Adam's (else the config's)."""
    config = run_config(mesh_shape, grad_accum, eps)
    cfg = tiny_model_config()
    devices = jax.devices()[:int(np.prod(list(config.mesh.values())))]
    mesh, rules = train_mesh.mesh_from_config(config, devices), train_mesh.rules_from_config(config)
    train_mesh.check_batch_layout(config, mesh, rules)
    program = build_program(config, cfg, mesh, rules, steps_per_epoch=4, total_steps=STEPS)
    state = (init_train_state(config, cfg, program.tx, program.shardings, mesh, rules) if initial is None
             else jax.device_put(initial, program.shardings))
    start = jax.device_get(state)
    losses = []
    with jax.set_mesh(mesh):
        for b in batches():
            state, m = program.train_step(state, data.device_batch(b, program.batch_shardings, CHUNK))
            losses.append(float(m["loss"]))
    return np.array(losses), jax.device_get(state), start, program


def assert_same_run(got, want, rtol=2e-5, atol=1e-3):
    """Losses to `rtol`; parameters to `atol`, after 10 Adam steps of 1e-2 each (parameters move by up to 0.1)."""
    np.testing.assert_allclose(got[0], want[0], rtol=rtol)
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(got[1].params)[0], jax.tree.leaves(want[1].params)):
        np.testing.assert_allclose(a, b, rtol=0, atol=atol, err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def reference():
    """One device, no accumulation, the config's Adam."""
    return train_steps("1x1x1")


@pytest.fixture(scope="module")
def layout_reference():
    """One device, no accumulation, Adam eps LAYOUT_EPS: the run every other layout must reproduce."""
    return train_steps("1x1x1", eps=LAYOUT_EPS)


def test_reference_run_trains(reference):
    losses, final, initial, _ = reference
    assert np.all(np.isfinite(losses)) and abs(losses[0] - np.log(VOCAB)) < 0.1  # random labels, random init
    assert int(final.step) == STEPS
    changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(final.params),
                                                        jax.tree.leaves(initial.params))]
    assert all(changed)  # every parameter trains, the vision tower and the zero-initialised gates included


@pytest.mark.slow
def test_sharded_and_accumulated_step_equals_single_device(layout_reference):
    """data x fsdp x tensor = 2 x 2 x 2 with two micro-batches: same losses and parameters."""
    assert_same_run(train_steps("2x2x2", grad_accum=2, initial=layout_reference[2], eps=LAYOUT_EPS), layout_reference)


def test_non_finite_step_leaves_state_unchanged(reference):
    _, final, _, program = reference
    bad = batches(1)[0]
    bad["pixel_values"][0, 0, 0, 0, 0, 0] = np.nan
    mesh = program.batch_shardings["input_ids"].mesh
    with jax.set_mesh(mesh):
        new, m = program.train_step(jax.device_put(final, program.shardings),
                                    data.device_batch(bad, program.batch_shardings, CHUNK))
    assert not bool(m["finite"]) and np.isnan(float(m["loss"]))
    new = jax.device_get(new)
    assert int(new.step) == STEPS
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(final)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_sharding_invariance_all_meshes(layout_reference):
    """Each mesh initialises its own sharded state; 10 steps give the single-device losses and parameters."""
    for mesh_shape in ("8x1x1", "1x8x1", "2x2x2", "1x4x2"):
        assert_same_run(train_steps(mesh_shape, eps=LAYOUT_EPS), layout_reference)
    assert_same_run(train_steps("1x1x1", grad_accum=4, eps=LAYOUT_EPS), layout_reference)
