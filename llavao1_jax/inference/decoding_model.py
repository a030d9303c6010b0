"""The model as the decoding engine reads it: the per-layer text layout, split for `jax.jit`, plus the engine's LM
head (a CPU copy of the kernel, and the token ids decoding may choose from).

Decoding wants the per-layer layout (`MllamaConfig.scan_layers=False`, see model/text.py): over a scanned stack XLA
copies every layer's weights out of the stack every step. A scanned model is converted with `relayout` (a copy of
its text weights, announced by a warning).

On CPU the engine also keeps the LM head kernel transposed, [vocab, hidden]: XLA's CPU GEMM of a few rows runs
faster against it than against the [hidden, vocab] kernel, while one row is fastest against the kernel as stored
(benchmarks/README.md has the figures). Batches of several rows use the copy, one row the model's kernel. It is an
engine-side derived array, not part of the model.

With `allowed_token_ids` (constrained decoding, or a model trained with a task vocabulary), the head keeps only those
columns: logits are computed for the allowed ids alone and every other id gets -inf, so sampling, greedy choice,
stop tokens and log-probabilities all see the distribution restricted to them.
"""
from __future__ import annotations

import warnings
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llavao1_jax.model.mllama import Mllama, relayout


class LMHead(NamedTuple):
    """The engine's LM head. `kernel_t` [rows, hidden]: the transposed kernel (all vocab rows on CPU, or the rows
    of `ids`), None to use the model's kernel; `ids` [K] int32: the token ids that may be chosen, None for all."""

    kernel_t: Optional[jax.Array]
    ids: Optional[jax.Array]


class DecodingModel(NamedTuple):
    """What the jitted engine functions take: `graphdef` (static) and `params` from `nnx.split` of a per-layer
    model, and `head`, the engine's `LMHead`."""

    graphdef: Any
    params: nnx.State
    head: LMHead


_transpose = jax.jit(lambda a: a.T)
_restricted = jax.jit(lambda kernel, ids: kernel[:, ids].T)


def allowed_ids(allowed_token_ids, vocab_size: int) -> np.ndarray:
    """The sorted unique ids of `allowed_token_ids`, checked to lie in [0, vocab_size)."""
    ids = np.unique(np.asarray(allowed_token_ids).reshape(-1))
    if ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"allowed_token_ids must be a non-empty sequence of token ids, got {allowed_token_ids!r}")
    if ids[0] < 0 or ids[-1] >= vocab_size:
        bad = ids[(ids < 0) | (ids >= vocab_size)]
        raise ValueError(f"allowed_token_ids {bad[:5].tolist()} outside the vocabulary [0, {vocab_size})")
    return ids.astype(np.int32)


def prepare(model: Mllama, allowed_token_ids=None) -> DecodingModel:
    """`model` in decoding form: its own arrays when it has the per-layer layout, else a per-layer copy of its text
    weights (with a warning); plus the engine's head (the CPU kernel copy, or the columns of `allowed_token_ids`).
    `Generator` calls this once and keeps the result."""
    if model.config.scan_layers:
        warnings.warn("decoding needs the per-layer text layout: made a per-layer copy of this scanned model's text "
                      "weights. Load with lj.load_pretrained(dir, scan_layers=False) (or convert with "
                      "llavao1_jax.model.relayout(model, scan_layers=False)) to avoid the copy.", stacklevel=3)
        model = relayout(model, scan_layers=False)
    graphdef, params = nnx.split(model)
    params = jax.tree.map(lambda a: a, params)  # new Variables over the same arrays: later model updates do not leak in
    kernel = model.language_model.lm_head.kernel[...]
    if allowed_token_ids is not None:
        ids = jnp.asarray(allowed_ids(allowed_token_ids, model.config.text.vocab_size))
        return DecodingModel(graphdef, params, LMHead(_restricted(kernel, ids), ids))
    on_cpu = all(d.platform == "cpu" for d in kernel.devices())
    return DecodingModel(graphdef, params, LMHead(_transpose(kernel) if on_cpu else None, None))


def head_logits(model: Mllama, head: LMHead, hidden: jax.Array) -> jax.Array:
    """LM head logits [B, S, vocab] in the compute dtype (traceable): from the [vocab, hidden] copy when there is one
    and the batch has several rows; with allowed ids, their logits and -inf for every other id."""
    dtype = model.language_model.dtype
    if head.ids is not None:
        restricted = jnp.einsum("kd,bsd->bsk", head.kernel_t.astype(dtype), hidden.astype(dtype))
        full = jnp.full((*hidden.shape[:-1], model.config.text.vocab_size), -jnp.inf, restricted.dtype)
        return full.at[..., head.ids].set(restricted)
    if head.kernel_t is None or hidden.shape[0] == 1:
        return model.language_model.logits(hidden)
    return jnp.einsum("vd,bsd->bsv", head.kernel_t.astype(dtype), hidden.astype(dtype))
