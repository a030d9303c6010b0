"""Choosing the next token from logits: greedy, or sampling with temperature, top-k and top-p (nucleus).

The filters follow transformers' logits warpers in their order (temperature, then top-k, then top-p) and its top-p
rule: a token is kept when the probability mass of the tokens strictly more likely than it is below `top_p`, so the
most likely token is always kept. Nothing here sorts the vocabulary: top-k uses `lax.top_k`, and top-p without
top-k finds its probability cut by bisection over the float order (32 masked sums over the vocabulary, exact), which
on CPU is an order of magnitude cheaper than a full sort of 128k logits.

Greedy decoding reads the vocabulary twice per row: once for the maxima of blocks of logits (the argmax is then
found inside the first block holding the maximum, and banned ids only touch their own blocks) and once for the
normaliser of the log-probabilities. On CPU at batch 8 with the 128k vocabulary that is 1.2 ms against 3.7 ms for
masking the whole vocabulary and comparing every logit with the maximum.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How the next token is chosen; static under jit (a change recompiles the decode loop).

    do_sample=False is greedy (argmax; the other fields are ignored). top_k=0 and top_p=1.0 switch those filters off.
    """

    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0

    def __post_init__(self):
        if not self.do_sample:
            return
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}")
        if not (isinstance(self.top_k, int) and self.top_k >= 0):
            raise ValueError(f"top_k must be a non-negative int (0 = off), got {self.top_k!r}")


def next_tokens(logits: jax.Array, keys: jax.Array, config: SamplingConfig, banned_ids: jax.Array | None = None,
                ban: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Chooses one token per row.

    Args:
      logits: [B, V] float32 next-token logits.
      keys: [B, 2] uint32 PRNG keys, one per row (unused when greedy).
      config: the `SamplingConfig`.
      banned_ids, ban: token ids [n] that rows with `ban` [B] True may not choose (stop tokens before
        `min_new_tokens`); ids >= V are ignored (padding).

    Returns:
      tokens [B] int32 and their log-probabilities [B] under the model's unprocessed distribution (temperature 1,
      no filtering, no banning): the quantity searches and judges compare.
    """
    banning = banned_ids is not None and banned_ids.size > 0
    if not config.do_sample:
        blocks = _blocks(logits)
        block_max = blocks.max(axis=-1)                                    # [B, n_blocks]
        log_total = _log_normaliser(logits, block_max.max(axis=-1))
        tokens, chosen = _first_max(blocks, block_max, banned_ids if banning else None, ban)
        return tokens, chosen - log_total
    log_total = _log_normaliser(logits, jnp.max(logits, axis=-1))
    processed = logits
    if banning:
        # an elementwise mask (not a scatter into a copy of the logits) fuses into the reductions that read it
        banned = jnp.zeros(logits.shape[-1], bool).at[banned_ids].set(True, mode="drop")
        processed = jnp.where(ban[:, None] & banned, -jnp.inf, logits)
    tokens = jax.vmap(lambda row, key: _sample_row(row, key, config))(processed, keys)
    chosen = jnp.take_along_axis(logits, tokens[:, None], axis=-1)[:, 0]
    return tokens, chosen - log_total


def _log_normaliser(logits: jax.Array, top: jax.Array) -> jax.Array:
    """log(sum(exp(logits))) per row, given the row maxima `top` [B]."""
    return top + jnp.log(jnp.sum(jnp.exp(logits - top[:, None]), axis=-1))


def _blocks(logits: jax.Array) -> jax.Array:
    """[B, V] -> [B, V / c, c] with c the divisor of V nearest sqrt(V) (a free reshape, no padding)."""
    v = logits.shape[-1]
    divisors = [d for small in range(1, math.isqrt(v) + 1) if v % small == 0 for d in (small, v // small)]
    c = min(divisors, key=lambda d: abs(d * d - v))
    return logits.reshape(logits.shape[0], v // c, c)


def _first_max(blocks: jax.Array, block_max: jax.Array, banned_ids, ban) -> tuple[jax.Array, jax.Array]:
    """The first maximum of each row (argmax's tie rule) and its value, with `banned_ids` [n] excluded in rows with
    `ban` [B] (ids >= V are padding). Reads only the blocks that hold the maximum or a banned id."""
    b, n, c = blocks.shape
    rows = jnp.arange(b)
    within = jnp.arange(c)
    if banned_ids is not None:
        ids = jnp.where(banned_ids < n * c, banned_ids, -1)
        home = jnp.maximum(ids, 0) // c                                    # the block of every banned id
        masked = jnp.where(_is_banned((home[:, None] * c + within)[None], ids, ban), -jnp.inf, blocks[:, home])
        block_max = block_max.at[rows[:, None], home].set(masked.max(axis=-1))
    top = block_max.max(axis=-1)
    first = jnp.argmax(block_max == top[:, None], axis=-1).astype(jnp.int32)
    block = blocks[rows, first]
    if banned_ids is not None:
        block = jnp.where(_is_banned(first[:, None] * c + within, ids, ban), -jnp.inf, block)
    offset = jnp.argmax(block == top[:, None], axis=-1).astype(jnp.int32)
    return first * c + offset, top


def _is_banned(positions: jax.Array, ids: jax.Array, ban: jax.Array) -> jax.Array:
    """[B, ...] bool: token `positions` [B or 1, ...] that are in `ids`, in rows with `ban` [B]."""
    hit = (positions[..., None] == ids).any(axis=-1)
    return ban.reshape(-1, *([1] * (hit.ndim - 1))) & hit


def _sample_row(logits: jax.Array, key: jax.Array, config: SamplingConfig) -> jax.Array:
    scaled = logits / config.temperature
    if config.top_k:
        values, ids = jax.lax.top_k(scaled, config.top_k)  # sorted, largest first
        if config.top_p < 1:
            probs = jax.nn.softmax(values)
            values = jnp.where(jnp.cumsum(probs) - probs < config.top_p, values, -jnp.inf)
        return ids[jax.random.categorical(key, values)].astype(jnp.int32)
    if config.top_p < 1:
        scaled = jnp.where(scaled >= _top_p_cut(scaled, config.top_p), scaled, -jnp.inf)
    return jax.random.categorical(key, scaled).astype(jnp.int32)


def _order_key(x: jax.Array) -> jax.Array:
    """int32 keys with the order of the float32 values x (finite or infinite, not NaN)."""
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.int32)
    return jnp.where(bits < 0, jnp.int32(-2**31) - bits - 1, bits)


def _top_p_cut(scaled: jax.Array, top_p: float) -> jax.Array:
    """The smallest logit of one row [V] that top-p keeps.

    With g(k) = mass of the tokens whose order key exceeds k (decreasing in k), a token is kept iff g(its key) < top_p,
    so the kept tokens are those with keys >= k0 = min{k : g(k) < top_p}; k0 lies between the smallest and largest
    key and 32 bisection steps over the int32 range find it exactly.
    """
    probs = jax.nn.softmax(scaled)
    keys = _order_key(scaled)

    def step(_, bounds):
        lo, hi = bounds  # k0 in [lo, hi]
        mid = (lo >> 1) + (hi >> 1) + (lo & hi & 1)  # floor((lo + hi) / 2) without int32 overflow
        below = jnp.sum(jnp.where(keys > mid, probs, 0.0)) < top_p
        return jnp.where(below, lo, mid + 1), jnp.where(below, mid, hi)

    k0, _ = jax.lax.fori_loop(0, 32, step, (keys.min(), keys.max()))
    return jnp.min(jnp.where(keys >= k0, scaled, jnp.inf))
