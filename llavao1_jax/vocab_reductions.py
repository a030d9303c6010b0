"""Reductions over the vocabulary axis, done in blocks.

On CPU, XLA reduces a whole 128k-entry row far more slowly than it reduces blocks of a few hundred entries (figures
in benchmarks/README.md). So a row is viewed as blocks of about sqrt(V) entries (a free reshape), each block is
reduced, and the block results are totalled as a product with ones, which XLA does not merge back into one
whole-row reduction. Sampling, the loss and the engine's token log-probabilities use these.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def blocks(x: jax.Array) -> jax.Array:
    """[..., V] -> [..., V / c, c], with c the divisor of V nearest sqrt(V) (a free reshape, no padding)."""
    v = x.shape[-1]
    divisors = [d for small in range(1, math.isqrt(v) + 1) if v % small == 0 for d in (small, v // small)]
    c = min(divisors, key=lambda d: abs(d * d - v))
    return x.reshape(*x.shape[:-1], v // c, c)


def row_total(block_sums: jax.Array) -> jax.Array:
    """Sums over the last axis of block sums [..., n], as a product with ones. XLA would merge a plain sum into the
    reduction that made the block sums: on CPU the slow whole-row reduction, which also stores the values feeding
    both."""
    ones = jnp.ones(block_sums.shape[-1], block_sums.dtype)
    return jnp.matmul(block_sums, ones, precision=jax.lax.Precision.HIGHEST)


def logsumexp(x: jax.Array, top: jax.Array | None = None) -> jax.Array:
    """log(sum(exp(x))) over the last axis [...], given the row maxima `top` [...] (computed when None, held
    constant under differentiation as in `jax.nn.logsumexp`). Rows must hold a finite maximum."""
    if top is None:
        top = jax.lax.stop_gradient(x.max(axis=-1))
    return top + jnp.log(row_total(jnp.exp(blocks(x) - top[..., None, None]).sum(axis=-1)))
