"""What decoding carries between jitted calls: the prefix state (cache and next-token logits) and the per-row outputs
of one generation, with row operations for searches (fork, select, reseed) and logical axis names for sharding."""
from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from llavao1_jax.model.layers import CACHED
from llavao1_jax.model.text import KVCache

FINISH_REASONS = ("running", "stop_token", "stop_string", "length")
RUNNING, STOP_TOKEN, STOP_STRING, LENGTH = range(4)


class DecodeState(NamedTuple):
    """A batch of prefixes ready to continue: everything fed so far is in the cache, `logits` predict the next token.

    All rows share the write slot `index` (a step writes one slot for every row; rows that are finished or skip a
    token write a slot that stays invalid), so rows differ only in `key_valid` and `positions`.

    cache: `KVCache` in the per-layer layout (model/text.py): tuples of per-layer arrays, K [B, KV, hd, length] and
      V [B, KV, length, hd], with length max_len for self-attention and the number of vision tokens for the cross K/V
      computed once from the images (None for text-only prompts). The cross K/V may have fewer rows, B / copies:
      after `fork`, the `copies` consecutive rows of one prefix share their image's row (`image_rows`).
    logits: [B, V] float32 next-token logits.
    key_valid: [B, max_len] bool, the cache slots each row attends to.
    positions: [B] int32, RoPE position of each row's next token (its number of real tokens so far).
    index: [] int32, the next cache slot to write.
    keys: [B, 2] uint32 per-row PRNG keys; step keys are fold_in(key, position).
    cross_mask: [B, images, tiles] int32, the cross-attention mask row of each row's last token, reused for every
      token that follows (transformers' behaviour); None for text-only prompts.
    """

    cache: KVCache
    logits: jax.Array
    key_valid: jax.Array
    positions: jax.Array
    index: jax.Array
    keys: jax.Array
    cross_mask: Optional[jax.Array]

    @property
    def batch_size(self) -> int:
        return self.logits.shape[0]

    @property
    def max_length(self) -> int:
        return self.key_valid.shape[1]

    @property
    def copies(self) -> int:
        """How many consecutive rows share one row of the cross K/V (1 unless forked; 1 without images)."""
        cross = self.cache.cross_k
        return 1 if cross is None else self.batch_size // cross[0].shape[0]

    def image_rows(self, rows: jax.Array) -> jax.Array:
        """The cross K/V row that each of `rows` reads."""
        return rows // self.copies

    def logical_axes(self) -> "DecodeState":
        """Logical axis names of every array, as PartitionSpecs of logical names (see sharding.py)."""
        return DecodeState(cache=self.cache.logical_axes(), logits=P("batch", None),
                           key_valid=P("batch", "length"), positions=P("batch"), index=P(), keys=P("batch", None),
                           cross_mask=None if self.cross_mask is None else P("batch", None, None))


class Generation(NamedTuple):
    """Per-row outputs of one generation, filled on the device step by step.

    tokens, logprobs: [B, T]; row b's first `lengths[b]` entries are valid (then 0). logprobs are of the chosen
      token under the model's unprocessed distribution (temperature 1, no top-k/top-p).
    lengths: [B] int32; finish: [B] int32 index into FINISH_REASONS (0 while running).
    max_new: [B] int32 per-row token budgets; matcher: [B, n, L] bool stop-string automaton states.
    stop_string: [B] int32, the index of the stop string that ended the row (the first one if several completed on
      the same token), -1 otherwise.
    """

    tokens: jax.Array
    logprobs: jax.Array
    lengths: jax.Array
    finish: jax.Array
    max_new: jax.Array
    matcher: jax.Array
    stop_string: jax.Array

    def logical_axes(self) -> "Generation":
        return Generation(tokens=P("batch", None), logprobs=P("batch", None), lengths=P("batch"), finish=P("batch"),
                          max_new=P("batch"), matcher=P("batch", None, None), stop_string=P("batch"))


def row_keys(seed: int, batch: int) -> jax.Array:
    """Per-row PRNG keys [batch, 2]: fold_in(PRNGKey(seed), row)."""
    return jax.vmap(lambda r: jax.random.fold_in(jax.random.PRNGKey(seed), r))(jnp.arange(batch))


def _take_rows(state: DecodeState, rows, image_rows) -> DecodeState:
    """Rows `rows` of every batch-major array (all but `index`), and rows `image_rows` of the cross K/V."""
    cache = state.cache
    cross = jax.tree.map(lambda a: a[image_rows], (cache.cross_k, cache.cross_v))
    state = state._replace(cache=cache._replace(cross_k=None, cross_v=None))
    out = jax.tree.map(lambda a: a if a.ndim == 0 else a[rows], state)
    return out._replace(cache=out.cache._replace(cross_k=cross[0], cross_v=cross[1]))


def select_rows(state: DecodeState, rows, copies: int = 1) -> DecodeState:
    """The prefixes `state[rows]` (rows [n] int, repeats allowed), keys unchanged: e.g. keep a search's winners.

    The self-attention cache rows are copied. With `copies` c > 1, each consecutive group of c selected rows must
    read one image row (e.g. one winner per question, then `fork`ed) and the result keeps one cross K/V row per
    group, shared by the group; with c = 1 every selected row gets its own. The source state stays valid."""
    if copies < 1 or len(rows) % copies:
        raise ValueError(f"copies must be >= 1 and divide the {len(rows)} selected rows, got {copies}")
    if state.cache.cross_k is not None and copies > 1 and not isinstance(rows, jax.core.Tracer):
        groups = np.asarray(state.image_rows(np.asarray(rows))).reshape(-1, copies)
        if (groups != groups[:, :1]).any():
            raise ValueError(f"each group of {copies} selected rows must read one image row, got image rows "
                             f"{groups.tolist()}")
    return _select_rows(state, jnp.asarray(rows), copies)


@functools.partial(jax.jit, static_argnums=2)
def _select_rows(state: DecodeState, rows: jax.Array, copies: int) -> DecodeState:
    return _take_rows(state, rows, state.image_rows(rows[::copies]))


@functools.partial(jax.jit, donate_argnums=0)
def compact(state: DecodeState) -> DecodeState:
    """The same prefixes with each row's valid cache slots moved to the front, in order, and `index` set to the
    longest row: the slots that finished or rejected candidates left behind become free room again. `state` is
    consumed. Attention reads the same keys in the same order, so continuations are unchanged up to rounding."""
    valid = state.key_valid
    order = jnp.argsort(~valid, axis=1, stable=True)                      # [B, L]: valid slots first, in order
    count = valid.sum(axis=1, dtype=jnp.int32)

    def move(x, axis):
        index = order.reshape(order.shape[0], *([1] * (axis - 1)), order.shape[1], *([1] * (x.ndim - axis - 1)))
        return jnp.take_along_axis(x, index, axis=axis)

    (k_axis, v_axis) = (a.index("s") for a in CACHED)
    cache = state.cache._replace(self_k=tuple(move(k, k_axis) for k in state.cache.self_k),
                                 self_v=tuple(move(v, v_axis) for v in state.cache.self_v))
    return state._replace(cache=cache, key_valid=jnp.arange(valid.shape[1])[None, :] < count[:, None],
                          index=count.max())


def fork(state: DecodeState, n: int) -> DecodeState:
    """Each row repeated `n` times in place ([r0 x n, r1 x n, ...]): `n` candidates per prefix that share the prompt
    and image work already done; the result is independent of `state`. Self-attention cache rows are copied per
    copy, the cross K/V once per prefix: the copies of a prefix share its image's row (the cross-attention layers run
    them as extra queries of that row), which saves about 210 MB per copy for the 11B model in bfloat16 and lets a
    step read each prefix's image K/V once.
    Copy c of a row gets the key fold_in(row key, c), so the copies sample differently."""
    if n < 1:
        raise ValueError(f"fork needs n >= 1, got {n}")
    return _fork(state, n)


@functools.partial(jax.jit, static_argnums=1)
def _fork(state: DecodeState, n: int) -> DecodeState:
    image_rows = None if state.cache.cross_k is None else jnp.arange(state.cache.cross_k[0].shape[0])
    out = _take_rows(state, jnp.repeat(jnp.arange(state.batch_size), n), image_rows)
    copies = jnp.tile(jnp.arange(n), state.batch_size)
    return out._replace(keys=jax.vmap(jax.random.fold_in)(out.keys, copies))


def reseed(state: DecodeState, seed: int) -> DecodeState:
    """The same prefixes with fresh per-row keys `row_keys(seed, B)` (e.g. a new round of samples from one prefix)."""
    return state._replace(keys=row_keys(seed, state.batch_size))


def cache_bytes(cache: KVCache) -> int:
    """Bytes of a (possibly abstract, from `jax.eval_shape`) cache."""
    return sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize for a in jax.tree.leaves(cache))
