"""The optax chain of a run, from `config.optim`: learning-rate schedule, clipping, AdamW with a weight-decay mask,
parameter groups frozen by path (frozen parameters get no update and carry no optimiser state) and a group whose
learning rate is scaled."""
from __future__ import annotations

import re

import jax
import ml_collections
import optax

SCHEDULES = ("constant", "epoch_decay", "warmup_cosine")


def check_optim(optim: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the `config.optim` key that names an unknown optimiser or schedule, or an invalid
    regular expression."""
    if optim.name != "adamw":
        raise ValueError(f"config.optim.name={optim.name!r}; only 'adamw' is implemented")
    if optim.schedule not in SCHEDULES:
        raise ValueError(f"config.optim.schedule={optim.schedule!r}; choose from {SCHEDULES}")
    for key in ("freeze", "weight_decay_exclude", "lr_scale_pattern"):
        try:
            re.compile(optim[key])
        except re.error as e:
            raise ValueError(f"config.optim.{key}={optim[key]!r} is not a regular expression: {e}") from None
    if optim.lr_scale <= 0:
        raise ValueError(f"config.optim.lr_scale={optim.lr_scale!r}; it must be positive")


def param_paths(params) -> dict:
    """The tree of `params` (nested dicts) with every leaf replaced by its path, e.g. 'language_model/norm/weight'."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path), params)


def learning_rate_schedule(optim: ml_collections.ConfigDict, *, steps_per_epoch: int,
                           total_steps: int) -> optax.Schedule:
    """`optim.schedule`: "constant"; "epoch_decay" (the LLaVA-CoT recipe: times `optim.epoch_decay` after every
    epoch of `steps_per_epoch` steps); "warmup_cosine" (linear warmup over `optim.warmup_steps`, then cosine decay
    to `optim.end_learning_rate` at `total_steps`). "constant" and "epoch_decay" also take the linear warmup."""
    check_optim(optim)
    lr, warmup = optim.learning_rate, optim.warmup_steps
    if optim.schedule == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(total_steps, warmup + 1),
                                                  end_value=optim.end_learning_rate)
    if optim.schedule == "constant":
        main = optax.constant_schedule(lr)
    else:  # epoch_decay
        main = optax.exponential_decay(lr, transition_steps=steps_per_epoch, decay_rate=optim.epoch_decay,
                                       staircase=True)
    if not warmup:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def path_mask(pattern: str, params) -> dict:
    """True for parameters whose path matches the regular expression `pattern` ("" matches nothing)."""
    compiled = re.compile(pattern) if pattern else None
    return jax.tree.map(lambda p: bool(compiled and compiled.search(p)), param_paths(params))


def frozen_mask(optim: ml_collections.ConfigDict, params) -> dict:
    """True for parameters whose path matches `optim.freeze`."""
    return path_mask(optim.freeze, params)


def make_optimizer(optim: ml_collections.ConfigDict, params, schedule: optax.Schedule
                   ) -> optax.GradientTransformation:
    """Gradient clipping (`optim.clip_norm` > 0) and AdamW on the trainable parameters; weight decay skips paths
    matching `optim.weight_decay_exclude`; the updates of paths matching `optim.lr_scale_pattern` are multiplied by
    `optim.lr_scale` (their learning rate scaled). `params` (arrays or abstract) only gives the tree and its paths."""
    check_optim(optim)
    decay_mask = jax.tree.map(lambda excluded: not excluded, path_mask(optim.weight_decay_exclude, params))
    chain = []
    if optim.clip_norm:
        chain.append(optax.clip_by_global_norm(optim.clip_norm))
    chain.append(optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps, weight_decay=optim.weight_decay,
                             mask=decay_mask))
    scaled = path_mask(optim.lr_scale_pattern, params)
    if optim.lr_scale != 1.0 and any(jax.tree.leaves(scaled)):
        chain.append(optax.masked(optax.scale(optim.lr_scale), scaled))
    trainable = optax.chain(*chain)
    frozen = frozen_mask(optim, params)
    if not any(jax.tree.leaves(frozen)):
        return trainable
    labels = jax.tree.map(lambda f: "frozen" if f else "trainable", frozen)
    return optax.multi_transform({"trainable": trainable, "frozen": optax.set_to_zero()}, labels)
