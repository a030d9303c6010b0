"""The jitted device computations of decoding: prefill, appending tokens to a cache, and the decode loop.

Every function is a pure function of the model in the per-layer layout, given as `decoding_model.prepare` makes it:
`graphdef` (static) and `params` from `nnx.split`, merged inside, and `head` (the engine's `LMHead`);
append and decode take the decode state as a donated argument, so the cache is updated in place and never
leaves the device. The decode loop is one `lax.while_loop`: it samples a token per row, records it, checks stop
tokens, stop strings and budgets, feeds the token back (one cache slot per step), and exits as soon as every row has
finished or `max_steps` steps ran.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from llavao1_jax import vocab_reductions as vocab
from llavao1_jax.inference import stop_strings
from llavao1_jax.inference.decoding_model import head_logits
from llavao1_jax.inference.sampling import SamplingConfig, next_tokens
from llavao1_jax.inference.sharding import constrain
from llavao1_jax.inference.state import LENGTH, RUNNING, STOP_STRING, STOP_TOKEN, DecodeState, Generation
from llavao1_jax.model.mllama import Mllama
from llavao1_jax.model.text import causal_bias


class Stopping(NamedTuple):
    """When rows stop (device arrays, so a change of ids or strings of the same shapes does not recompile).

    token_ids: [n] int32, padded with the vocabulary size (matches nothing); strings: `stop_strings.StopStrings`
    tables; min_new_tokens: [] int32, the number of tokens a row generates before any stop token may be chosen or any
    stop can end it.
    """

    token_ids: jax.Array
    strings: stop_strings.StopStrings
    min_new_tokens: jax.Array


def advance(model: Mllama, head, state: DecodeState, tokens: jax.Array, valid: jax.Array, cross_rows=None,
            image_states=None, score: bool = False):
    """Feeds a chunk of tokens [B, S] to the cache at slots [index, index + S) (traceable).

    valid [B, S] bool marks real tokens (others take a slot that no row attends to). RoPE positions continue each
    row's count. cross_rows [B, S, images, tiles] is the chunk's cross-attention mask (default: the state's last row
    for every token); image_states (prefill only) are the projected image features the cross K/V are computed from.
    Rows with no valid token keep their logits and mask row. With `score`, also returns the log-probability [B, S]
    of each valid token given everything before it (0 at invalid positions).
    """
    b, s = tokens.shape
    index = state.index
    key_valid = jax.lax.dynamic_update_slice(state.key_valid, valid, (0, index))
    positions = jnp.maximum(state.positions[:, None] + jnp.cumsum(valid, axis=1, dtype=jnp.int32) - 1, 0)
    bias = causal_bias(index + jnp.arange(s), key_valid)
    cross = None
    cache = state.cache
    if cache.cross_k is not None:
        if cross_rows is None:
            cross_rows = jnp.broadcast_to(state.cross_mask[:, None], (b, s, *state.cross_mask.shape[1:]))
        kv = dict(states=image_states) if image_states is not None else dict(k=cache.cross_k, v=cache.cross_v)
        cross = model.cross_inputs(cross_rows, **kv)
    all_hidden, cache = model.language_model(tokens, positions, bias, cross, cache, index)
    last = s - 1 - jnp.argmax(valid[:, ::-1], axis=1)                      # each row's last valid token
    hidden = jnp.take_along_axis(all_hidden, last[:, None, None], axis=1)  # [B, 1, D]: the head runs on B rows only
    logits = head_logits(model, head, hidden)[:, 0].astype(jnp.float32)
    fed = valid.any(axis=1)
    cross_mask = state.cross_mask
    if cross_mask is not None:
        row = jnp.take_along_axis(cross_rows, last[:, None, None, None], axis=1)[:, 0]
        cross_mask = jnp.where(fed[:, None, None], row.astype(cross_mask.dtype), cross_mask)
    new_state = DecodeState(cache=cache, logits=jnp.where(fed[:, None], logits, state.logits), key_valid=key_valid,
                            positions=state.positions + valid.sum(axis=1, dtype=jnp.int32), index=index + s,
                            keys=state.keys, cross_mask=cross_mask)
    if not score:
        return new_state
    return new_state, token_logprobs(model, head, state.logits, all_hidden, tokens, valid)


def token_logprobs(model: Mllama, head, logits: jax.Array, hidden: jax.Array, tokens: jax.Array, valid: jax.Array,
                   chunk: int = 16) -> jax.Array:
    """log p(tokens[b, j] | everything before it) [B, S] for valid positions (0 elsewhere), from `logits` [B, V]
    (the prediction before the chunk) and the chunk's hidden states [B, S, D]. Each valid token is predicted by
    the previous valid position's hidden state; the head runs over `chunk` positions at a time, so no [B, S, V]
    array is formed."""
    b, s = tokens.shape
    position = jnp.arange(s)
    # next valid position after each j (s if none), and the token found there
    later = jnp.where(valid, position, s)
    following = jax.lax.cummin(jnp.concatenate([later[:, 1:], jnp.full((b, 1), s)], axis=1), axis=1, reverse=True)
    next_token = jnp.take_along_axis(tokens, jnp.minimum(following, s - 1), axis=1)
    pad = -s % chunk
    h = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(b, -1, chunk, hidden.shape[-1]).swapaxes(0, 1)
    t = jnp.pad(next_token, ((0, 0), (0, pad))).reshape(b, -1, chunk).swapaxes(0, 1)

    def score_chunk(args):
        h_c, t_c = args
        chunk_logits = head_logits(model, head, h_c).astype(jnp.float32)         # [B, chunk, V]
        picked = jnp.take_along_axis(chunk_logits, t_c[..., None], axis=-1)[..., 0]
        return picked - vocab.logsumexp(chunk_logits)

    predicted_next = jax.lax.map(score_chunk, (h, t)).swapaxes(0, 1).reshape(b, -1)[:, :s]   # [B, S]
    first = jnp.take_along_axis(logits, tokens, axis=1) - vocab.logsumexp(logits)[:, None]
    # the score of a valid token comes from the previous valid position, or from `logits` for a row's first one
    previous = jax.lax.cummax(jnp.where(valid, position, -1), axis=1)
    previous = jnp.concatenate([jnp.full((b, 1), -1), previous[:, :-1]], axis=1)
    from_chunk = jnp.take_along_axis(predicted_next, jnp.maximum(previous, 0), axis=1)
    return jnp.where(valid, jnp.where(previous >= 0, from_chunk, first), 0.0)


@functools.partial(jax.jit, static_argnums=(0, 5))
def prefill(graphdef, params, head, inputs: dict, keys: jax.Array, max_length: int) -> DecodeState:
    """Runs the prompts (`inputs`: validated model inputs, attention_mask required, cross_attention_mask required with
    images) into a new cache of `max_length` slots: vision tower and cross K/V once, all prompt tokens in one pass."""
    model = nnx.merge(graphdef, params)
    ids, valid = inputs["input_ids"], inputs["attention_mask"].astype(bool)
    b = ids.shape[0]
    image_states = cross_rows = cross_mask = None
    if "pixel_values" in inputs:
        image_states = model.encode_images(inputs["pixel_values"], inputs["aspect_ratio_ids"],
                                           inputs["aspect_ratio_mask"])
        cache = model.init_cache(b, max_length, image_states.shape[1])
        cross_rows = inputs["cross_attention_mask"]
        cross_mask = jnp.zeros((b, *cross_rows.shape[2:]), jnp.int32)
    else:
        cache = model.init_cache(b, max_length)
    empty = DecodeState(cache=cache, logits=jnp.zeros((b, model.config.text.vocab_size), jnp.float32),
                        key_valid=jnp.zeros((b, max_length), bool), positions=jnp.zeros(b, jnp.int32),
                        index=jnp.zeros((), jnp.int32), keys=keys, cross_mask=cross_mask)
    return constrain(advance(model, head, empty, ids, valid, cross_rows, image_states))


@functools.partial(jax.jit, static_argnums=(0, 6), donate_argnums=3)
def append(graphdef, params, head, state: DecodeState, tokens: jax.Array, valid: jax.Array, score: bool = False):
    """Teacher forcing: feeds tokens [B, S] (valid [B, S]) to the cache after what is there; with `score`, also
    returns each token's log-probability [B, S]."""
    out = advance(nnx.merge(graphdef, params), head, state, tokens, valid, score=score)
    return (constrain(out[0]), out[1]) if score else constrain(out)


@functools.partial(jax.jit, static_argnums=(0, 7, 8))
def prefill_on_images(graphdef, params, head, images: DecodeState, tokens: jax.Array, valid: jax.Array,
                      keys: jax.Array, max_length: int, image_token_id: int) -> DecodeState:
    """New prompts tokens [R, S] (valid [R, S]) in a new cache of `max_length` slots that see the images already
    encoded in `images`: its cross K/V rows are reused (R / n consecutive rows share one image row), and each
    row's tokens from its first `image_token_id` on may attend to that image's tiles (earlier tokens to none)."""
    model = nnx.merge(graphdef, params)
    b = tokens.shape[0]
    tiles = images.cross_mask[::images.copies]                             # [n image rows, I, T]
    tiles = jnp.repeat(tiles, b // tiles.shape[0], axis=0)                 # [R, I, T]
    seen = (jnp.cumsum(tokens == image_token_id, axis=1) > 0) & valid
    cross_rows = seen[:, :, None, None].astype(tiles.dtype) * tiles[:, None]
    cache = model.init_cache(b, max_length)._replace(cross_k=images.cache.cross_k, cross_v=images.cache.cross_v)
    empty = DecodeState(cache=cache, logits=jnp.zeros((b, model.config.text.vocab_size), jnp.float32),
                        key_valid=jnp.zeros((b, max_length), bool), positions=jnp.zeros(b, jnp.int32),
                        index=jnp.zeros((), jnp.int32), keys=keys, cross_mask=jnp.zeros_like(tiles))
    return constrain(advance(model, head, empty, tokens, valid, cross_rows))


def decode_step(model: Mllama, head, sampling: SamplingConfig, stopping: Stopping, state: DecodeState,
                gen: Generation) -> tuple[DecodeState, Generation]:
    """One token for every running row: choose, record, check stops, feed back (traceable)."""
    b, t = gen.tokens.shape
    running = gen.finish == RUNNING
    ban = gen.lengths < stopping.min_new_tokens
    step_keys = jax.vmap(jax.random.fold_in)(state.keys, state.positions)
    tokens, logprobs = next_tokens(state.logits, step_keys, sampling, stopping.token_ids, ban)
    tokens = jnp.where(running, tokens, 0)
    column = jnp.where(running, gen.lengths, t)                            # out of range: dropped
    rows = jnp.arange(b)
    matcher, string_hits = stop_strings.step(stopping.strings, gen.matcher, tokens)
    string_hit = string_hits.any(axis=1)
    lengths = gen.lengths + running
    token_hit = (tokens[:, None] == stopping.token_ids[None, :]).any(axis=1)
    finish = jnp.select([~running, token_hit & ~ban, string_hit & ~ban, lengths >= gen.max_new],
                        [gen.finish, STOP_TOKEN, STOP_STRING, LENGTH], RUNNING)
    stop_string = gen.stop_string
    if stopping.strings.num_strings:
        first_hit = jnp.argmax(string_hits, axis=1).astype(jnp.int32)
        stop_string = jnp.where(running & (finish == STOP_STRING), first_hit, stop_string)
    gen = Generation(tokens=gen.tokens.at[rows, column].set(tokens, mode="drop"),
                     logprobs=gen.logprobs.at[rows, column].set(logprobs, mode="drop"),
                     lengths=lengths, finish=finish.astype(gen.finish.dtype), max_new=gen.max_new, matcher=matcher,
                     stop_string=stop_string)
    return advance(model, head, state, tokens[:, None], running[:, None]), gen


@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=(4, 5))
def decode(graphdef, sampling: SamplingConfig, params, head, state: DecodeState, gen: Generation,
           stopping: Stopping, max_steps: jax.Array) -> tuple[DecodeState, Generation]:
    """Up to `max_steps` decode steps in one while_loop, stopping early when no row is running. Rows still running
    when the cache is full finish with reason 'length'."""
    model = nnx.merge(graphdef, params)

    def cond(carry):
        state, gen, step = carry
        return (step < max_steps) & jnp.any(gen.finish == RUNNING) & (state.index < state.max_length)

    def body(carry):
        state, gen, step = carry
        state, gen = decode_step(model, head, sampling, stopping, state, gen)
        return constrain(state), constrain(gen), step + 1

    state, gen, _ = jax.lax.while_loop(cond, body, (state, gen, jnp.zeros((), jnp.int32)))
    full = (gen.finish == RUNNING) & (state.index >= state.max_length)
    gen = gen._replace(finish=jnp.where(full, LENGTH, gen.finish).astype(gen.finish.dtype))
    return constrain(state), constrain(gen)
