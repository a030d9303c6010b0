"""The SFT loss: token cross-entropy at supervised positions only, the LM head applied in chunks of positions.

A batch's labels are aligned with its input ids (`llavao1_jax.data.pipeline`): position t predicts labels[t + 1]. On
the host, `loss_targets` lists per row the positions whose next label is trained, padded to a static count `P` (a
multiple of the chunk size, from `supervised_length`). On the device, `supervised_cross_entropy` gathers those rows
of the final hidden states ([B, P, D] instead of [B, S, D]) and applies the head one chunk of positions at a time,
with a hand-written backward pass (the logits are recomputed and turned into their gradient, softmax minus one-hot,
in one elementwise pass), so neither pass holds more than a couple of [B, chunk, vocab] float32 arrays.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from llavao1_jax import vocab_reductions as vocab
from llavao1_jax.data.pipeline import IGNORE_INDEX


def supervised_length(labels: np.ndarray, chunk_size: int) -> int:
    """The loss length for a batch: `chunk_size` times the smallest power of two that holds every row's supervised
    positions, at most the sequence length rounded up to a chunk (few distinct lengths: few compilations)."""
    labels = np.asarray(labels)
    count = int((labels[:, 1:] != IGNORE_INDEX).sum(axis=1).max(initial=0))
    chunks = 1 << max(0, -(-count // chunk_size) - 1).bit_length()
    return min(chunks, -(-labels.shape[1] // chunk_size)) * chunk_size


def loss_targets(labels: np.ndarray, length: int) -> dict[str, np.ndarray]:
    """Per row, the positions t with a trained label at t + 1, in order, padded to `length`.

    Returns `loss_positions` int32 [B, length], `loss_targets` int32 [B, length] (the label at t + 1) and
    `loss_weights` float32 [B, length] (1 on real entries, 0 on padding, which points at position 0)."""
    labels = np.asarray(labels)
    next_labels = labels[:, 1:]
    trained = next_labels != IGNORE_INDEX
    if trained.sum(axis=1).max(initial=0) > length:
        raise ValueError(f"a row has {trained.sum(axis=1).max()} supervised positions, more than the loss length "
                         f"{length}")
    width = min(length, next_labels.shape[1])
    order = np.argsort(~trained, axis=1, kind="stable")[:, :width]  # trained positions first, in order
    keep = np.take_along_axis(trained, order, axis=1)
    pad = ((0, 0), (0, length - width))
    return {"loss_positions": np.pad(np.where(keep, order, 0), pad).astype(np.int32),
            "loss_targets": np.pad(np.where(keep, np.take_along_axis(next_labels, order, axis=1), 0), pad
                                   ).astype(np.int32),
            "loss_weights": np.pad(keep, pad).astype(np.float32)}


def _logits(h: jax.Array, kernel: jax.Array) -> jax.Array:
    """The LM head in the hidden states' (compute) dtype, accumulated and returned in float32: [B, c, V]."""
    return jnp.einsum("bcd,dv->bcv", h, kernel.astype(h.dtype), preferred_element_type=jnp.float32)


@jax.custom_vjp
def _chunk_loss(h, kernel, targets, weights):
    """sum(weights * cross-entropy) of one chunk: h [B, c, D], kernel [D, V], targets/weights [B, c]."""
    return _chunk_loss_fwd(h, kernel, targets, weights)[0]


def _chunk_loss_fwd(h, kernel, targets, weights):
    logits = _logits(h, kernel)
    lse = vocab.logsumexp(logits)
    per_token = lse - jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return jnp.sum(per_token * weights), (h, kernel, targets, weights, lse, per_token)


def _chunk_loss_bwd(residuals, g):
    h, kernel, targets, weights, lse, per_token = residuals
    logits = _logits(h, kernel)
    target = jnp.arange(logits.shape[-1]) == targets[..., None]
    dlogits = ((jnp.exp(logits - lse[..., None]) - target) * (weights * g)[..., None]).astype(h.dtype)
    dh = jnp.einsum("bcv,dv->bcd", dlogits, kernel.astype(h.dtype), preferred_element_type=jnp.float32)
    dkernel = jnp.einsum("bcd,bcv->dv", h, dlogits, preferred_element_type=jnp.float32)
    return dh.astype(h.dtype), dkernel.astype(kernel.dtype), None, per_token * g


_chunk_loss.defvjp(_chunk_loss_fwd, _chunk_loss_bwd)


def supervised_cross_entropy(hidden: jax.Array, kernel: jax.Array, positions: jax.Array, targets: jax.Array,
                             weights: jax.Array, chunk_size: int) -> jax.Array:
    """Sum over supervised positions of weight * cross-entropy (float32), the LM head `kernel` [D, V] applied only
    to the gathered positions, `chunk_size` positions per row at a time, in the dtype of `hidden`.

    hidden [B, S, D]; positions, targets, weights [B, P] with P a multiple of `chunk_size` (see `loss_targets`)."""
    b, p = positions.shape
    if p % chunk_size:
        raise ValueError(f"the loss length {p} is not a multiple of the chunk size {chunk_size}")
    gathered = jnp.take_along_axis(hidden, positions[..., None], axis=1)  # [B, P, D]
    chunks = p // chunk_size
    split = lambda x: jnp.swapaxes(x.reshape(b, chunks, chunk_size, *x.shape[2:]), 0, 1)

    def body(total, chunk):
        return total + _chunk_loss(*chunk[:1], kernel, *chunk[1:]), None

    total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), (split(gathered), split(targets), split(weights)))
    return total
