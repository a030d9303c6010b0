"""Bad configs fail with errors naming the key before anything compiles; the optimiser chain follows the config;
a checkpoint from another config names the mismatched array."""
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flax import nnx

from configs.sft_tiny import get_config
from llavao1_jax.sharding import DEFAULT_RULES, make_mesh
from llavao1_jax.train import checkpoint, optimizer
from llavao1_jax.train.loop import train
from llavao1_jax.train.state import TrainState, abstract_model, model_config, train_state_shardings


def test_unknown_config_field_is_rejected(tmp_path):
    result = subprocess.run([sys.executable, "-m", "llavao1_jax.train", "--config", "configs/sft_tiny.py",
                             "--workdir", str(tmp_path), "--config.optim.learning_rat=1e-4"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "learning_rat" in result.stderr
    assert not (tmp_path / "config.json").exists()


@pytest.mark.parametrize("changes, message", [
    (dict(mesh=dict(data=3, fsdp=1, tensor=1)), r"config.mesh: mesh .* needs 3 devices, have 8"),
    (dict(mesh=dict(data=1, fsdp=3, tensor=-1)), r"config.mesh: 8 devices cannot be split"),
    (dict(batch_size=12), r"config.batch_size=12 must be a multiple of config.grad_accum=1 times the "
                          r"data-parallel size 8"),
    (dict(batch_size=8, grad_accum=2), r"config.batch_size=8 must be a multiple of config.grad_accum=2"),
    (dict(sharding_rules=(("batch", "fsdpp"),)), r"config.sharding_rules: rule for 'batch' names mesh axis 'fsdpp'"),
    (dict(optim=dict(schedule="linear")), r"config.optim.schedule='linear'; choose from"),
    (dict(optim=dict(freeze="vision(")), r"config.optim.freeze='vision\(' is not a regular expression"),
    (dict(total_steps=0, num_epochs=0), r"set config.total_steps or config.num_epochs"),
    (dict(xla_cpu_scheduler="fastest"), r"config.xla_cpu_scheduler='fastest'; choose from"),
    (dict(checkpoint_every=0), r"config.checkpoint_every=0; it must be at least 1"),
])
def test_bad_layout_fails_before_compiling(tmp_path, changes, message):
    config = get_config()
    config.update_from_flattened_dict({k: v for k, v in _flatten(changes).items()})
    began = time.perf_counter()
    with pytest.raises(ValueError, match=message):
        train(config, tmp_path)
    assert time.perf_counter() - began < 5
    assert not any(tmp_path.iterdir())  # nothing written


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _params():
    return {"vision_model": {"w": jnp.ones((3, 2))}, "language_model": {"norm": {"weight": jnp.ones(2)},
                                                                          "w": jnp.ones((2, 2))}}


def test_epoch_decay_schedule_and_warmup():
    optim = get_config().optim
    optim.update(dict(schedule="epoch_decay", learning_rate=1e-5, epoch_decay=0.85))
    lr = optimizer.learning_rate_schedule(optim, steps_per_epoch=10, total_steps=30)
    np.testing.assert_allclose([lr(0), lr(9), lr(10), lr(25)], [1e-5, 1e-5, 0.85e-5, 0.85 ** 2 * 1e-5], rtol=1e-6)
    optim.warmup_steps = 4
    lr = optimizer.learning_rate_schedule(optim, steps_per_epoch=10, total_steps=30)
    np.testing.assert_allclose([lr(0), lr(2), lr(4)], [0.0, 0.5e-5, 1e-5], rtol=1e-6)
    optim.schedule = "warmup_cosine"
    lr = optimizer.learning_rate_schedule(optim, steps_per_epoch=10, total_steps=30)
    np.testing.assert_allclose([lr(4), lr(30)], [1e-5, 0.0], atol=1e-12)


def test_frozen_parameters_get_no_update_and_no_state():
    optim = get_config().optim
    optim.update(dict(freeze=r"^vision_model/", weight_decay=0.1, weight_decay_exclude=r"norm", clip_norm=0.0,
                      learning_rate=0.1))
    params = _params()
    tx = optimizer.make_optimizer(optim, params, optax.constant_schedule(0.1))
    state = tx.init(params)
    moments = [x.shape for x in jax.tree.leaves(state) if x.ndim]
    assert sorted(moments) == sorted([(2,), (2, 2)] * 2)  # mu and nu of the two trainable arrays only
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, state, params)
    np.testing.assert_array_equal(updates["vision_model"]["w"], 0.0)
    # AdamW's first step is -lr * (sign + weight decay * p) where decayed
    np.testing.assert_allclose(updates["language_model"]["w"], -0.1 * (1 + 0.1), rtol=1e-5)
    np.testing.assert_allclose(updates["language_model"]["norm"]["weight"], -0.1, rtol=1e-5)


def test_scaled_group_takes_a_multiple_of_the_learning_rate():
    optim = get_config().optim
    optim.update(dict(lr_scale_pattern=r"^language_model/w$", lr_scale=3.0, clip_norm=0.0, weight_decay=0.0))
    params = _params()
    tx = optimizer.make_optimizer(optim, params, optax.constant_schedule(0.1))
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    np.testing.assert_allclose(updates["language_model"]["w"], -0.3, rtol=1e-5)  # Adam's first step: -lr * sign
    np.testing.assert_allclose(updates["language_model"]["norm"]["weight"], -0.1, rtol=1e-5)
    np.testing.assert_allclose(updates["vision_model"]["w"], -0.1, rtol=1e-5)
    optim.lr_scale = 0.0
    with pytest.raises(ValueError, match=r"config.optim.lr_scale=0.0"):
        optimizer.make_optimizer(optim, params, optax.constant_schedule(0.1))


def test_checkpoint_from_another_config_names_the_array(tmp_path):
    state = lambda shape: TrainState(step=jnp.zeros((), jnp.int32), params={"embed": jnp.zeros(shape)},
                                     opt_state={"mu": jnp.zeros(shape)}, rng=jnp.zeros(2, jnp.uint32))
    ckpt = checkpoint.Checkpointer(tmp_path, keep=1, async_save=False)
    ckpt.save(5, state((4, 3)), {"process_0": {"position": 1}})
    ckpt.close()
    ckpt = checkpoint.Checkpointer(tmp_path, keep=1)  # a restarted run's
    wanted = state((4, 2))
    shardings = jax.tree.map(lambda a: jax.sharding.SingleDeviceSharding(jax.devices()[0]), wanted)
    with pytest.raises(checkpoint.CheckpointMismatchError, match=r"array 'params/embed' is float32\[4, 3\] there "
                                                                  r"but float32\[4, 2\]"):
        ckpt.restore(5, jax.eval_shape(lambda: wanted), shardings)
    restored, data_state = ckpt.restore(5, jax.eval_shape(lambda: state((4, 3))),
                                        jax.tree.map(lambda a: shardings.step, state((4, 3))))
    assert data_state == {"position": 1} and restored.params["embed"].shape == (4, 3)
    ckpt.close()


def test_optimiser_state_is_sharded_like_its_parameters_with_frozen_groups():
    config = get_config()
    config.optim.freeze = r"^vision_model/"
    graphdef, abstract = abstract_model(model_config(config))
    tx = optimizer.make_optimizer(config.optim, nnx.to_pure_dict(abstract), optax.constant_schedule(1e-3))
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    shardings = train_state_shardings(abstract, tx, mesh, DEFAULT_RULES)
    params = {jax.tree_util.keystr(p): s for p, s in jax.tree_util.tree_flatten_with_path(shardings.params)[0]}
    moments = [(jax.tree_util.keystr(p), s) for p, s in jax.tree_util.tree_flatten_with_path(shardings.opt_state)[0]
               if ".mu" in jax.tree_util.keystr(p) or ".nu" in jax.tree_util.keystr(p)]
    assert moments and not any("vision_model" in p for p, _ in moments)  # frozen: no optimiser state
    assert len(moments) == 2 * sum("vision_model" not in p for p in params)
    for path, sharding in moments:
        param = next(p for p in params if path.endswith(p))
        assert sharding == params[param], path
    embed = "['language_model']['embed_tokens']"
    assert params[embed].spec == jax.sharding.PartitionSpec("tensor", "fsdp")  # ("vocab", "embed")
