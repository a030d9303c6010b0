"""`Generator`: a model prepared once for decoding, and the host-side calls of the jitted engine on it (validate
inputs, bucket shapes, return numpy results).

`generate(model, batch)` is the one-call API; it builds a `Generator` per call. Searches and evaluations build one
`Generator` and use the pieces: `prefill` a batch of prompts once, `fork` each prefix into candidates (state.py),
`decode` them with stop strings, keep rows with `select_rows` or teacher-force a chosen continuation / a judge
prompt with `append_tokens`, and `decode` again from there.

Shapes are bucketed so that calls of similar sizes share compilations: prompt lengths by `bucket_length`, cache
room and output buffers to multiples of 64, stop-string tables to powers of two.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from llavao1_jax.inference import engine
from llavao1_jax.inference.decoding_model import prepare
from llavao1_jax.inference.stop_strings import for_tokenizer, initial_state
from llavao1_jax.inference.sampling import SamplingConfig
from llavao1_jax.inference.state import (FINISH_REASONS, RUNNING, DecodeState, Generation, compact, fork, row_keys,
                                         reseed, select_rows)
from llavao1_jax.model.mllama import INPUT_NAMES, Mllama, validate_inputs
from llavao1_jax.util import round_up

ROOM_MULTIPLE = 64
PROMPT_INPUTS = tuple(n for n in INPUT_NAMES if n != "position_ids")


def bucket_length(n: int) -> int:
    """The padded length for n tokens: the next power of two up to 32, then steps of a quarter of the enclosing
    power of two (at most 25% padding beyond 32, four shapes per doubling)."""
    if n <= 32:
        return 1 << (n - 1).bit_length()
    step = (1 << (n - 1).bit_length()) // 4
    return round_up(n, step)


def _per_row(name: str, value, batch: int) -> np.ndarray:
    values = np.broadcast_to(np.asarray(value), (batch,)) if np.ndim(value) == 0 else np.asarray(value)
    if values.shape != (batch,) or not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"{name} must be an int or one int per row ({batch}), got {value!r}")
    return values.astype(np.int32)


# ----------------------------------------------------------------------------------------------------- inputs
def prompt_inputs(config, batch: dict) -> dict:
    """Validated model inputs from a processor dict, left-padded to `bucket_length` of the prompt length."""
    if not isinstance(batch, dict) and not hasattr(batch, "keys"):
        raise ValueError(f"batch must be a dict of arrays (the processor's output), got {type(batch).__name__}")
    if "position_ids" in batch:
        raise ValueError("position_ids are computed from attention_mask (cumsum - 1); do not pass them")
    unknown = sorted(set(batch.keys()) - set(PROMPT_INPUTS))
    if unknown:
        raise ValueError(f"unexpected inputs {unknown}; expected some of {list(PROMPT_INPUTS)}")
    inputs = {k: np.asarray(v) for k, v in batch.items() if v is not None}
    if "input_ids" not in inputs or inputs["input_ids"].ndim != 2:
        raise ValueError("input_ids [batch, seq] is required")
    b, s = inputs["input_ids"].shape
    mask = inputs.setdefault("attention_mask", np.ones((b, s), np.int32))
    if mask.shape == (b, s) and not mask.astype(bool).any(axis=1).all():
        raise ValueError(f"rows {np.flatnonzero(~mask.astype(bool).any(axis=1)).tolist()} have no tokens "
                         "(attention_mask all 0)")
    if "pixel_values" in inputs and "cross_attention_mask" not in inputs and inputs["pixel_values"].ndim == 6:
        inputs["cross_attention_mask"] = np.ones((b, s, *inputs["pixel_values"].shape[1:3]), np.int32)
    validate_inputs(config, inputs)  # raises on bad shapes, dtypes and ids
    pad = bucket_length(s) - s
    for name in ("input_ids", "attention_mask", "cross_attention_mask"):
        if name in inputs:
            widths = [(0, 0), (pad, 0)] + [(0, 0)] * (inputs[name].ndim - 2)
            inputs[name] = np.pad(inputs[name], widths)
    return validate_inputs(config, inputs)


# ------------------------------------------------------------------------------------------------------ results
@dataclasses.dataclass
class GenerationResult:
    """What a generation produced (numpy, on the host).

    tokens: [B, T] int32 with T = max_new_tokens; row b's tokens are tokens[b, :lengths[b]] (the stop token, if
      one ended the row, included), zeros after.
    lengths: [B] int32.
    finish_reason: per row "stop_token", "stop_string", "length" (budget or cache full) or "running" (stopped after
      `Decoder.run(max_steps)` before the end).
    logprobs: [B, T] float32, log-probability of each chosen token under the model's distribution at temperature 1
      without top-k/top-p filtering; 0 after lengths.
    stop_string: per row the stop string that ended it (finish_reason "stop_string"), else None.
    texts: the decoded rows (special tokens skipped) when a processor or tokenizer was given, else None.
    """

    tokens: np.ndarray
    lengths: np.ndarray
    finish_reason: list[str]
    logprobs: np.ndarray
    stop_string: list[Optional[str]]
    texts: Optional[list[str]] = None


def make_stopping(config, stop_token_ids, strings: tuple[str, ...], tokenizer, min_new_tokens: int):
    """Device stop criteria: stop_token_ids None -> the config's eos ids, () -> none."""
    text = config.text
    ids = tuple(text.eos_token_id) if stop_token_ids is None else tuple(int(i) for i in stop_token_ids)
    bad = [i for i in ids if not 0 <= i < text.vocab_size]
    if bad:
        raise ValueError(f"stop_token_ids {bad} outside the vocabulary [0, {text.vocab_size})")
    if strings and tokenizer is None:
        raise ValueError("stop_strings need the tokenizer: pass processor=")
    if min_new_tokens < 0:
        raise ValueError(f"min_new_tokens must be >= 0, got {min_new_tokens}")
    tables = for_tokenizer(tokenizer, text.vocab_size, strings)
    padded = ids + (text.vocab_size,) * (round_up(len(ids), 8) - len(ids))  # never sampled: one shape for <= 8 ids
    return engine.Stopping(jnp.asarray(padded, jnp.int32).reshape(-1), tables, jnp.asarray(min_new_tokens, jnp.int32))


# ---------------------------------------------------------------------------------------------------- generator
class Generator:
    """A model prepared for decoding, with the engine's calls on it. Build one per model and reuse it.

    Building it takes the model in the per-layer layout (a scanned model is converted: a copy of its text weights,
    with a warning; load with `scan_layers=False` to avoid it) and, on CPU, a [vocab, hidden] copy of the LM head.
    It holds the arrays it was built with: after the model's parameters change (a training step, `nnx.update`),
    build a new one. The jitted engine functions are shared by every `Generator`; each compiles once per shape
    bucket and model structure.

    `allowed_token_ids` restricts every choice of a token (greedy, sampling, log-probabilities) to those ids: the
    distribution is the model's softmax over them alone, and its head computes only their logits (constrained
    decoding; a model trained with a task vocabulary). Stop tokens outside them can never end a row.
    """

    # The row operations of state.py, so that a search drives everything through one object.
    fork = staticmethod(fork)
    select_rows = staticmethod(select_rows)
    compact = staticmethod(compact)
    reseed = staticmethod(reseed)

    def __init__(self, model: Mllama, allowed_token_ids: Optional[Sequence[int]] = None):
        if not isinstance(model, Mllama):
            raise TypeError(f"Generator takes an Mllama model, got {type(model).__name__}")
        self.config = model.config
        self.decoding_model = prepare(model, allowed_token_ids)

    def prefill(self, batch: dict, *, max_new_tokens: int, seed: int = 0) -> DecodeState:
        """Runs a batch of prompts (images and text) once and returns the state to decode from.

        Args:
          batch: the processor's dict (input_ids, attention_mask, pixel_values, aspect_ratio_ids, aspect_ratio_mask,
            cross_attention_mask) or transformers' processor output; any padding side.
          max_new_tokens: cache room after the prompt, for generated and appended tokens (rounded up to 64).
          seed: per-row keys are fold_in(PRNGKey(seed), row).
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        inputs = prompt_inputs(self.config, batch)
        b, s = inputs["input_ids"].shape
        return engine.prefill(*self.decoding_model, inputs, row_keys(seed, b),
                              s + round_up(max_new_tokens, ROOM_MULTIPLE))

    def prefill_on_images(self, images: DecodeState, tokens, mask=None, *, max_new_tokens: int,
                          seed: int = 0) -> DecodeState:
        """Prefills new prompts (e.g. judge conversations) that see images already encoded in `images`.

        tokens [R, S] are whole prompts (BOS, headers, `<|image|>`, text), mask [R, S] marks the real tokens (pad
        anywhere). With n image rows in `images` (its cross K/V), R must be a multiple of n: consecutive groups of
        R / n rows share one image row, taken from `images` (one copy per image row, never recomputed). A row's
        tokens from its first `<|image|>` on see all of that image's tiles, earlier tokens none (the processor's
        rule for a prompt with one image). `images` stays valid.
        """
        if images.cache.cross_k is None:
            raise ValueError("prefill_on_images needs a state with images (its prompts had pixel_values)")
        tokens, mask = self._checked_tokens(tokens, mask, batch=None)
        n = images.cache.cross_k[0].shape[0]
        if tokens.shape[0] % n:
            raise ValueError(f"{tokens.shape[0]} prompts cannot be split evenly over the {n} image rows")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        pad = bucket_length(tokens.shape[1]) - tokens.shape[1]
        tokens, mask = np.pad(tokens, [(0, 0), (pad, 0)]), np.pad(mask, [(0, 0), (pad, 0)])
        return engine.prefill_on_images(*self.decoding_model, images, jnp.asarray(tokens, jnp.int32),
                                        jnp.asarray(mask), row_keys(seed, tokens.shape[0]),
                                        tokens.shape[1] + round_up(max_new_tokens, ROOM_MULTIPLE),
                                        self.config.image_token_index)

    def append_tokens(self, state: DecodeState, tokens, mask=None, *, return_logprobs: bool = False):
        """Teacher forcing: feeds `tokens` [B, S] (e.g. a chosen continuation, a judge prompt) after each row's prefix.

        mask [B, S] (default all 1) marks the real tokens, so rows may append different lengths (pad anywhere). The
        next-token logits become those after each row's last real token. `state` is consumed (its buffers are
        donated); copy rows first with `select_rows`/`fork` to keep it. With `return_logprobs`, returns
        `(state, logprobs)`: logprobs [B, S] float32 numpy, each real token's log-probability given everything
        before it (0 at padding).
        """
        tokens, mask = self._checked_tokens(tokens, mask, batch=state.batch_size)
        s = tokens.shape[1]
        pad = bucket_length(s) - s
        tokens, mask = np.pad(tokens, [(0, 0), (0, pad)]), np.pad(mask, [(0, 0), (0, pad)])
        room = state.max_length - int(state.index)
        if tokens.shape[1] > room:
            raise ValueError(f"the cache has room for {room} more slots, appending needs {tokens.shape[1]} "
                             f"({s} padded to {tokens.shape[1]}); prefill with a larger max_new_tokens")
        out = engine.append(*self.decoding_model, state, jnp.asarray(tokens, jnp.int32), jnp.asarray(mask),
                            return_logprobs)
        return (out[0], np.asarray(out[1])[:, :s]) if return_logprobs else out

    def _checked_tokens(self, tokens, mask, batch: Optional[int]) -> tuple[np.ndarray, np.ndarray]:
        """Integer tokens [batch, S] with ids in the embedding and a matching bool mask (default all 1)."""
        tokens = np.asarray(tokens)
        if (tokens.ndim != 2 or (batch is not None and tokens.shape[0] != batch)
                or not np.issubdtype(tokens.dtype, np.integer)):
            raise ValueError(f"tokens must be integer [batch={batch if batch is not None else 'rows'}, seq], got "
                             f"{tokens.dtype} {tokens.shape}")
        mask = np.ones(tokens.shape, bool) if mask is None else np.asarray(mask).astype(bool)
        if mask.shape != tokens.shape:
            raise ValueError(f"mask shape {mask.shape} differs from tokens shape {tokens.shape}")
        rows = self.config.text.embedding_rows
        if tokens.size and (tokens.min() < 0 or tokens.max() >= rows):
            raise ValueError(f"token ids must lie in [0, {rows}), got {tokens.min()}..{tokens.max()}")
        return tokens, mask

    def decode(self, state: DecodeState, **options) -> tuple[GenerationResult, DecodeState]:
        """Generates from `state` to the end (`Decoder` options: max_new_tokens, do_sample, temperature, top_p, top_k,
        min_new_tokens, stop_token_ids, stop_strings, processor). Returns the result and the state after it; `state`
        is consumed."""
        decoder = Decoder(self, state, **options)
        decoder.run()
        return decoder.result(), decoder.state

    def generate(self, batch: dict, *, max_new_tokens: Union[int, Sequence[int]] = 256, seed: int = 0,
                 **options) -> GenerationResult:
        """Generates continuations of a batch of prompts: `prefill`, then `decode` (see `generate`)."""
        state = self.prefill(batch, max_new_tokens=int(np.max(max_new_tokens)), seed=seed)
        return self.decode(state, max_new_tokens=max_new_tokens, **options)[0]


class Decoder:
    """One generation in progress from a `DecodeState`: `run()` to the end, or `run(k)` repeatedly to stream.

    The state is consumed (donated to the first run); `Decoder.state` is the state after what ran, a prefix that
    includes each row's generated tokens (its stop token too) and can be decoded from again.
    """

    def __init__(self, generator: Generator, state: DecodeState, *,
                 max_new_tokens: Union[int, Sequence[int]] = 256, do_sample: bool = False, temperature: float = 1.0,
                 top_p: float = 1.0, top_k: int = 0, min_new_tokens: int = 0,
                 stop_token_ids: Optional[Sequence[int]] = None, stop_strings: Sequence[str] = (), processor=None):
        b = state.batch_size
        max_new = _per_row("max_new_tokens", max_new_tokens, b)
        if max_new.min() < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.sampling = SamplingConfig(do_sample, temperature, top_p, top_k)
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.stop_strings = (stop_strings,) if isinstance(stop_strings, str) else tuple(stop_strings)
        self.stopping = make_stopping(generator.config, stop_token_ids, self.stop_strings, self.tokenizer,
                                      min_new_tokens)
        room = state.max_length - int(state.index)
        if max_new.max() > room:
            raise ValueError(f"max_new_tokens {int(max_new.max())} exceeds the cache's room ({room} slots); prefill "
                             "with a larger max_new_tokens")
        self.decoding_model = generator.decoding_model
        self.num_tokens = int(max_new.max())
        t = round_up(self.num_tokens, ROOM_MULTIPLE)
        self.state = state
        self.gen = Generation(tokens=jnp.zeros((b, t), jnp.int32), logprobs=jnp.zeros((b, t), jnp.float32),
                              lengths=jnp.zeros(b, jnp.int32), finish=jnp.zeros(b, jnp.int32),
                              max_new=jnp.asarray(max_new),
                              matcher=initial_state(self.stopping.strings, b),
                              stop_string=jnp.full(b, -1, jnp.int32))

    def run(self, max_steps: Optional[int] = None) -> bool:
        """Runs up to `max_steps` decode steps (default: until every row finishes) in one jitted while_loop.
        Returns True when every row has finished."""
        steps = self.num_tokens if max_steps is None else max_steps
        graphdef, params, head = self.decoding_model
        self.state, self.gen = engine.decode(graphdef, self.sampling, params, head, self.state, self.gen,
                                             self.stopping, jnp.asarray(steps, jnp.int32))
        return bool(np.all(np.asarray(self.gen.finish) != RUNNING))

    def result(self) -> GenerationResult:
        """The tokens so far (copied to the host)."""
        gen = jax.device_get(self.gen)
        t = self.num_tokens
        texts = None
        if self.tokenizer is not None:
            texts = [self.tokenizer.decode(row[:n].tolist(), skip_special_tokens=True)
                     for row, n in zip(gen.tokens, gen.lengths)]
        return GenerationResult(tokens=gen.tokens[:, :t], lengths=gen.lengths,
                                finish_reason=[FINISH_REASONS[f] for f in gen.finish], logprobs=gen.logprobs[:, :t],
                                stop_string=[self.stop_strings[i] if i >= 0 else None for i in gen.stop_string],
                                texts=texts)


def generate(model: Mllama, batch: dict, *, max_new_tokens: Union[int, Sequence[int]] = 256, do_sample: bool = False,
             temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, min_new_tokens: int = 0,
             stop_token_ids: Optional[Sequence[int]] = None, stop_strings: Sequence[str] = (), processor=None,
             seed: int = 0, allowed_token_ids: Optional[Sequence[int]] = None) -> GenerationResult:
    """Generates continuations of a batch of prompts (builds a `Generator` for this call; build one yourself to
    generate repeatedly with the same model).

    Args:
      model: an `Mllama`, best in the per-layer layout (`lj.load_pretrained(dir, scan_layers=False)`); a scanned
        model is converted for the call (a copy of its text weights, with a warning).
      batch: the processor's dict of arrays (or transformers' `MllamaProcessor` output); any padding side.
      max_new_tokens: budget per row (an int or one per row).
      do_sample, temperature, top_p, top_k: greedy when do_sample is False; else sampling with transformers'
        temperature -> top-k -> top-p filters (top_k=0 / top_p=1 switch them off).
      min_new_tokens: tokens generated before any stop may end a row (stop tokens are masked until then).
      stop_token_ids: None -> the model config's eos ids; () -> none.
      stop_strings: strings that end a row when the generated text contains them (needs `processor`).
      processor: a `Processor` or tokenizer, for stop strings and `texts`.
      seed: PRNG seed; row r samples with fold_in(PRNGKey(seed), r).
      allowed_token_ids: restrict decoding to these ids (see `Generator`); None: the whole vocabulary.

    Returns:
      `GenerationResult` (tokens, lengths, finish_reason, logprobs, texts).
    """
    return Generator(model, allowed_token_ids).generate(batch, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                     temperature=temperature, top_p=top_p, top_k=top_k, min_new_tokens=min_new_tokens,
                                     stop_token_ids=stop_token_ids, stop_strings=stop_strings, processor=processor,
                                     seed=seed)
