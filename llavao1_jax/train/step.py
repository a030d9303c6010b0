"""The jitted train and eval steps.

`make_train_step` returns `(state, batch) -> (state, metrics)`: the batch is split into `grad_accum` micro-batches
that a `lax.scan` runs one after another, summing gradients (with `grad_accum` 1, one pass and no accumulator); the
loss is the mean cross-entropy over the supervised tokens of the whole global batch, so it does not depend on how
the batch is split over devices or micro-batches. A step whose loss or gradient norm is not finite returns the state
unchanged and `finite = False`. `jit_train_step` compiles it with explicit in/out shardings and the state donated.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from llavao1_jax.model.mllama import INPUT_NAMES
from llavao1_jax.train.loss import supervised_cross_entropy
from llavao1_jax.train.state import TrainState


def make_loss_sum(graphdef: nnx.GraphDef, chunk_size: int, vocab_ids: np.ndarray | None = None) -> Callable:
    """`(params, batch) -> summed cross-entropy` over the batch's supervised positions (see `loss`); with
    `vocab_ids` (a task vocabulary), the softmax runs over those head columns and the targets index into them."""

    def loss_sum(params, batch):
        model = nnx.merge(graphdef, params)
        hidden = model.hidden_states(**{k: batch[k] for k in INPUT_NAMES if k in batch})
        kernel = model.language_model.lm_head.kernel[...]
        if vocab_ids is not None:
            kernel = jnp.take(kernel, jnp.asarray(vocab_ids), axis=1)
        return supervised_cross_entropy(hidden, kernel, batch["loss_positions"], batch["loss_targets"],
                                        batch["loss_weights"], chunk_size)

    return loss_sum


def _micro_batches(batch: dict, grad_accum: int) -> dict:
    """[B, ...] -> [grad_accum, B / grad_accum, ...], micro-batch i holding rows i, i + grad_accum, ...: every
    device's rows split evenly, so a micro-batch keeps the batch's sharding without moving data."""
    def split(x):
        x = x.reshape(x.shape[0] // grad_accum, grad_accum, *x.shape[1:])
        return jnp.swapaxes(x, 0, 1)
    return jax.tree.map(split, batch)


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, schedule: optax.Schedule, *,
                    frozen, grad_accum: int, chunk_size: int, param_shardings=None,
                    vocab_ids: np.ndarray | None = None) -> Callable:
    """The train step (see the module docstring). `frozen` is the tree of `optimizer.frozen_mask` (no gradient
    flows into those parameters); `param_shardings` pins the gradient accumulator to the parameters' layout;
    `vocab_ids` is the task vocabulary or None."""
    loss_sum = make_loss_sum(graphdef, chunk_size, vocab_ids)

    def train_step(state: TrainState, batch: dict):
        weight = jnp.maximum(batch["loss_weights"].sum(), 1.0)

        def loss_of_trainable(params, micro):  # this micro-batch's share of the mean: gradients come out scaled
            params = jax.tree.map(lambda p, f: jax.lax.stop_gradient(p) if f else p, params, frozen)
            return loss_sum(params, micro) / weight

        def pin(grads):
            if param_shardings is None:
                return grads
            return jax.lax.with_sharding_constraint(grads, param_shardings)

        def accumulate(carry, micro):
            grads, total = carry
            loss, g = jax.value_and_grad(loss_of_trainable)(state.params, micro)
            return (pin(jax.tree.map(jnp.add, grads, g)), total + loss), None

        if grad_accum == 1:  # no accumulator: one gradient-sized buffer and one pass over it fewer
            loss, grads = jax.value_and_grad(loss_of_trainable)(state.params, batch)
            grads = pin(grads)
        else:
            zeros = jax.tree.map(jnp.zeros_like, state.params)
            (grads, loss), _ = jax.lax.scan(accumulate, (zeros, jnp.zeros((), jnp.float32)),
                                            _micro_batches(batch, grad_accum))
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        def update(state):
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            return TrainState(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                              opt_state=opt_state, rng=state.rng)

        # A branch rather than a select between old and new state: the update runs in place, with no second copy.
        new = jax.lax.cond(finite, update, lambda state: state, state)
        metrics = {"loss": loss, "grad_norm": grad_norm, "learning_rate": schedule(state.step),
                   "supervised_tokens": batch["loss_weights"].sum(), "tokens": batch["attention_mask"].sum(),
                   "finite": finite}
        return new, metrics

    return train_step


def jit_train_step(train_step: Callable, state_shardings: TrainState, batch_shardings: dict, mesh,
                   compiler_options: dict | None = None) -> Callable:
    """`jax.jit` of the train step: state and batch in their shardings, the state donated, metrics replicated,
    compiled with XLA's `compiler_options`."""
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(train_step, in_shardings=(state_shardings, batch_shardings),
                   out_shardings=(state_shardings, replicated), donate_argnums=0, compiler_options=compiler_options)


def jit_eval_step(graphdef: nnx.GraphDef, chunk_size: int, param_shardings, batch_shardings: dict, mesh,
                  vocab_ids: np.ndarray | None = None, compiler_options: dict | None = None) -> Callable:
    """`(params, batch) -> (summed loss, supervised tokens)`, jitted with the same shardings and XLA options as
    training."""
    loss_sum = make_loss_sum(graphdef, chunk_size, vocab_ids)
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(lambda params, batch: (loss_sum(params, batch), batch["loss_weights"].sum()),
                   in_shardings=(param_shardings, batch_shardings), out_shardings=replicated,
                   compiler_options=compiler_options)
