"""Choosing the next token from logits: greedy, or sampling with temperature, top-k and top-p (nucleus).

The filters are transformers' logits warpers, in their order: temperature divides the logits; top-k keeps every
token at least as likely as the k-th most likely (ties at the boundary are all kept); top-p keeps a token when the
probability mass of the tokens ranked above it is below `top_p`. Among tied tokens the higher id ranks above, which
is the order `torch.sort(stable=True)` gives transformers' ascending sort: the same number of tied tokens and the
same mass are kept as transformers keeps with any sort, and the same tokens as with a stable one (its default CPU
sort is not stable, so which tied ids survive there depends on the sorting network).

Sampling never sorts the vocabulary and draws one uniform number per row and attempt. A token is drawn by inverse
CDF over blocks of the vocabulary (block masses, then a cumulative sum inside the drawn block). top-p is rejection
sampling: the drawn token is kept when the mass ranked above it is below `top_p`, one masked pass over the
vocabulary; otherwise every token ranked at or below it is outside the nucleus too, and the next draw comes from the
tokens ranked above it, whose block masses that pass produced. Each attempt is accepted with probability at least
`top_p` and the result is an exact draw from the nucleus. Every row makes one attempt; rejected rows try again a
quarter of the batch at a time, each with its own key and attempt count, so a row's token does not depend on the
other rows.

Greedy decoding reads the vocabulary twice per row: once for the maxima of blocks of logits (the argmax is then
found inside the first block holding the maximum, and banned ids only touch their own blocks) and once for the
normaliser of the log-probabilities.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from llavao1_jax import vocab_reductions as vocab


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


@jax.named_scope("next_tokens")
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
        blocks = vocab.blocks(logits)
        block_max = blocks.max(axis=-1)                                    # [B, n_blocks]
        log_total = vocab.logsumexp(logits, block_max.max(axis=-1))
        tokens, chosen = _first_max(blocks, block_max, banned_ids if banning else None, ban)
        return tokens, chosen - log_total
    top = jnp.max(logits, axis=-1)
    log_total = vocab.logsumexp(logits, top)
    processed = logits
    if banning:
        # an elementwise mask (not a scatter into a copy of the logits) fuses into the reductions that read it
        banned = jnp.zeros(logits.shape[-1], bool).at[banned_ids].set(True, mode="drop")
        processed = jnp.where(ban[:, None] & banned, -jnp.inf, logits)
        top = jnp.max(processed, axis=-1)
    tokens = _sample(processed, top, keys, config)
    chosen = jnp.take_along_axis(logits, tokens[:, None], axis=-1)[:, 0]
    return tokens, chosen - log_total


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


def _sample(logits: jax.Array, top: jax.Array, keys: jax.Array, config: SamplingConfig) -> jax.Array:
    """One token per row [B] from the filtered distribution of `logits` [B, V] (-inf: excluded) with row maxima
    `top` [B].

    Ranks compare the logits themselves: XLA may round a computed value differently in two fusions, which would
    break ties. Dividing by the temperature keeps their order (transformers ranks the quotients, which tie where
    the division rounds two logits to one value)."""
    if config.top_k:
        kth = jax.lax.top_k(logits, min(config.top_k, logits.shape[-1]))[0][:, -1:]
        logits = jnp.where(logits >= kth, logits, -jnp.inf)
    b = logits.shape[0]
    blocks = vocab.blocks(logits)
    shifted = vocab.blocks((logits - top[:, None]) / config.temperature)  # log-probabilities + log normaliser
    mass = jnp.exp(shifted).sum(axis=-1)                                   # [B, n_blocks]
    nowhere = (jnp.full(b, -jnp.inf), jnp.full(b, -1, jnp.int32))         # ranks below every token
    if config.top_p == 1:
        return _draw(blocks, shifted, mass, *nowhere, _uniform(keys, jnp.zeros(b, jnp.int32)))
    limit = config.top_p * vocab.row_total(mass)

    def attempt(carry, rows=None):
        """One draw and nucleus test for rows `rows` [K] (ids >= B: none; None: all); the others keep their state."""
        tokens, done, floor_value, floor_token, mass, tries = carry
        at = slice(None) if rows is None else jnp.minimum(rows, b - 1)
        drawn = _draw(blocks[at], shifted[at], mass[at], floor_value[at], floor_token[at],
                      _uniform(keys[at], tries[at]))
        value = jnp.take_along_axis(logits[at], drawn[:, None], axis=-1)[:, 0]
        above = _mass_above(blocks[at], shifted[at], value, drawn)
        accept = vocab.row_total(above) < limit[at]
        put = (lambda x, new: new) if rows is None else (lambda x, new: x.at[rows].set(new, mode="drop"))
        return (put(tokens, drawn), put(done, accept), put(floor_value, value), put(floor_token, drawn),
                put(mass, above), put(tries, tries[at] + 1))

    # every row once, then the rejected ones (about 1 - top_p of them) a quarter of the rows at a time
    carry = attempt((jnp.zeros(b, jnp.int32), jnp.zeros(b, bool), *nowhere, mass, jnp.zeros(b, jnp.int32)))
    retry = lambda carry: attempt(carry, jnp.nonzero(~carry[1], size=-(-b // 4), fill_value=b)[0])
    return jax.lax.while_loop(lambda carry: ~carry[1].all(), retry, carry)[0]


def _uniform(keys: jax.Array, attempts: jax.Array) -> jax.Array:
    """[B] uniform numbers in [0, 1), one per row key [B, 2] and attempt number [B]."""
    return jax.vmap(lambda key, attempt: jax.random.uniform(jax.random.fold_in(key, attempt)))(keys, attempts)


def _ranks_above(values: jax.Array, ids: jax.Array, value: jax.Array, token: jax.Array) -> jax.Array:
    """Whether tokens `ids` with `values` rank above `token` with `value` (a larger value, or a tie and a larger id);
    value and token broadcast against values and ids."""
    return (values > value) | ((values == value) & (ids > token))


def _mass_above(blocks: jax.Array, shifted: jax.Array, value: jax.Array, token: jax.Array) -> jax.Array:
    """[B, n_blocks] unnormalised probability mass exp(shifted) per block of the tokens whose logits `blocks`
    [B, n, c] rank above `token` (with logit `value`) in each row; one pass over the vocabulary."""
    b, n, c = blocks.shape
    ids = jnp.arange(n * c, dtype=jnp.int32).reshape(n, c)
    above = _ranks_above(blocks, ids, value[:, None, None], token[:, None, None])
    # exp of masked log-weights, not masked weights: XLA then keeps the exp inside the reduction
    return jnp.exp(jnp.where(above, shifted, -jnp.inf)).sum(axis=-1)


def _draw(blocks: jax.Array, shifted: jax.Array, mass: jax.Array, floor_value: jax.Array, floor_token: jax.Array,
          u: jax.Array) -> jax.Array:
    """Inverse-CDF draw [B] of a token ranked above (floor_value, floor_token) by its logit `blocks` [B, n, c], with
    probability proportional to exp(shifted) [B, n, c], given those tokens' block masses `mass` [B, n] and uniform
    numbers u [B]."""
    b, n, c = blocks.shape
    rows = jnp.arange(b)
    cumulative = jnp.cumsum(mass, axis=-1)
    target = u * cumulative[:, -1]
    block = jnp.minimum(jnp.sum(cumulative <= target[:, None], axis=-1), _last_positive(mass))
    before = jnp.where(block > 0, cumulative[rows, jnp.maximum(block - 1, 0)], 0.0)
    ids = block[:, None] * c + jnp.arange(c, dtype=jnp.int32)
    above = _ranks_above(blocks[rows, block], ids, floor_value[:, None], floor_token[:, None])
    inside = jnp.exp(jnp.where(above, shifted[rows, block], -jnp.inf))
    # rounding can leave the target past the block's own sum: the last possible token then takes the remainder
    offset = jnp.minimum(jnp.sum(jnp.cumsum(inside, axis=-1) <= (target - before)[:, None], axis=-1),
                         _last_positive(inside))
    return (block * c + offset).astype(jnp.int32)


def _last_positive(x: jax.Array) -> jax.Array:
    """[B] index of the last positive entry of each row of x [B, m] (m - 1 when none)."""
    m = x.shape[-1]
    return (m - 1 - jnp.argmax(x[:, ::-1] > 0, axis=-1)).astype(jnp.int32)
