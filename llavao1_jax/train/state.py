"""The train state (step, parameters, optimiser state, RNG key) and its sharded creation: shapes from
`jax.eval_shape`, shardings from the parameters' logical axis names, values made straight into their shards."""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from llavao1_jax.model.config import MllamaConfig, preset
from llavao1_jax.model.hf_checkpoint import load_pretrained
from llavao1_jax.model.mllama import Mllama, init_model
from llavao1_jax.sharding import state_shardings
from llavao1_jax.train.mesh import rules_from_config


class TrainState(NamedTuple):
    """What a checkpoint holds besides the data position. `params` are nested dicts of arrays (`nnx.to_pure_dict`
    of the model's state); `rng` is the raw key data of the run's PRNG key (the base key of anything stochastic)."""

    step: Any
    params: Any
    opt_state: Any
    rng: Any


def model_config(config: ml_collections.ConfigDict) -> MllamaConfig:
    """The model of `config.model`: `init_from` (a transformers directory's config.json) or `preset`, with the
    execution knobs (dtypes, remat, attention) of the config, in the scanned layout that training wants, its hidden
    states placed at layer boundaries by the config's sharding rules."""
    m = config.model
    knobs = dict(dtype=m.dtype, param_dtype=m.param_dtype, remat=m.remat, attention_impl=m.attention_impl,
                 scan_layers=True, activation_rules=rules_from_config(config))
    if m.init_from:
        return MllamaConfig.from_json_file(f"{m.init_from}/config.json", **knobs)
    return preset(m.preset, **knobs)


def abstract_model(cfg: MllamaConfig) -> tuple[nnx.GraphDef, nnx.State]:
    """The model's graph definition and abstract state (shapes, dtypes, logical axes; nothing allocated)."""
    return nnx.split(nnx.eval_shape(lambda: Mllama(cfg, rngs=nnx.Rngs(0))))


def train_state_shardings(abstract_params_state: nnx.State, tx: optax.GradientTransformation, mesh: Mesh,
                          rules) -> TrainState:
    """NamedShardings of the whole train state: parameters by their logical axes, optimiser moments like their
    parameters, scalars (step, counts, RNG) replicated."""
    params = nnx.to_pure_dict(state_shardings(abstract_params_state, mesh, rules))
    replicated = NamedSharding(mesh, PartitionSpec())
    by_path = {_dict_keys(path): s for path, s in jax.tree_util.tree_flatten_with_path(params)[0]}
    abstract_opt = jax.eval_shape(tx.init, nnx.to_pure_dict(abstract_params_state))
    # An optimiser leaf whose path ends in a parameter's path (e.g. mu/<param path>) is laid out like it.
    opt = jax.tree_util.tree_map_with_path(lambda path, _: by_path.get(_dict_keys(path), replicated), abstract_opt)
    return TrainState(step=replicated, params=params, opt_state=opt, rng=replicated)


def _dict_keys(path) -> tuple:
    """The trailing run of dictionary keys of a tree path (a parameter's path inside an optimiser state)."""
    keys = []
    for k in reversed(path):
        if not isinstance(k, jax.tree_util.DictKey):
            break
        keys.append(k.key)
    return tuple(reversed(keys))


def _fresh_state(params, tx: optax.GradientTransformation, seed: int) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=jax.random.key_data(jax.random.key(seed)))


def abstract_train_state(abstract_params_state: nnx.State, tx: optax.GradientTransformation, seed: int
                         ) -> TrainState:
    """The train state's shapes and dtypes (what a checkpoint must match); nothing allocated."""
    return jax.eval_shape(lambda p: _fresh_state(p, tx, seed), nnx.to_pure_dict(abstract_params_state))


CROSS_ATTENTION_GATES = ("cross_attn_attn_gate", "cross_attn_mlp_gate")


def open_cross_attention_gates(params: dict, value: float) -> dict:
    """`params` with the text decoder's cross-attention gates set to `value`. transformers initialises them to 0,
    so no image information reaches the text until they grow, which Adam lets them do by about the learning rate
    per step: a slow start for a model trained from scratch (`config.model.gate_init`)."""
    def set_gate(path, leaf):
        name = getattr(path[-1], "key", None)
        return jnp.full_like(leaf, value) if name in CROSS_ATTENTION_GATES else leaf
    return jax.tree_util.tree_map_with_path(set_gate, params)


def init_train_state(config: ml_collections.ConfigDict, cfg: MllamaConfig, tx: optax.GradientTransformation,
                     shardings: TrainState, mesh: Mesh, rules) -> TrainState:
    """A fresh train state, every array created in its shard: parameters from `config.model.init_from` (loaded
    tensor by tensor into their shards) or random (`init_model` with `config.seed`, the cross-attention gates set
    to `config.model.gate_init`), then the optimiser state."""
    if config.model.init_from:
        model = load_pretrained(config.model.init_from, cfg.dtype, param_dtype=cfg.param_dtype, mesh=mesh,
                                rules=rules, remat=cfg.remat, attention_impl=cfg.attention_impl, scan_layers=True)
    else:
        model = init_model(cfg, config.seed, mesh=mesh, rules=rules)
    params = nnx.to_pure_dict(nnx.state(model))
    gate_init = 0.0 if config.model.init_from else float(config.model.get("gate_init", 0.0))

    def fresh(p):
        return _fresh_state(open_cross_attention_gates(p, gate_init) if gate_init else p, tx, config.seed)

    return jax.jit(fresh, in_shardings=(shardings.params,), out_shardings=shardings, donate_argnums=0)(params)
