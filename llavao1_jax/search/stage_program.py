"""The stage-level beam search of one batch of questions as one traceable function (`search_batch`, jitted): the
prompts' prefill, then for each of the four stages the candidates, the judge (mean log-probability, or the
self-judge's knockout tournament with the reasoning pre-check) and the winners' rows kept as the next prefix.

It does what the stepwise path (methods.py, candidates.py, judges.py) does, with the same engine functions and the
same keys, inside one `jax.jit`. The four stages are one `lax.scan` step each, so the stage body compiles once:
what differs between stages (closing tag, stop-string tables, rubric texts, hints, whether the reasoning pre-check
runs) is data, padded to common shapes and masked. The tournament's rounds (log2 n, static) are unrolled. Judge
prompts are concatenated on the device from token segments with masks, and verdicts are read on the device. A
candidate is laid out at its full budget (masked); a judge prompt's shared part (instruction, question, hints) at
the longest one possible, prefilled once per question, and its pair part (the two responses, the reminder) appended
per pair.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from llavao1_jax.inference import bucket_length, compact, engine, fork, select_rows
from llavao1_jax.inference.engine import Stopping
from llavao1_jax.inference.generator import ROOM_MULTIPLE
from llavao1_jax.inference.sampling import SamplingConfig
from llavao1_jax.inference.state import Generation, row_keys
from llavao1_jax.inference.stop_strings import StopStrings, first_match, initial_state
from llavao1_jax.search.prompts import STAGES
from llavao1_jax.util import round_up

Tokens = tuple[int, ...]
REASONING, CONCLUSION = STAGES.index("REASONING"), STAGES.index("CONCLUSION")


@dataclasses.dataclass(frozen=True)
class StagePlan:
    """Everything static about a batch's search (hashable: the jit's cache key): the model structure, the
    config's numbers, and the token ids of the fixed prompt pieces (see prompts.py)."""

    graphdef: Any
    n: int
    judge: str                      # "logprob" or "self"
    verdict: str                    # "generate" or "probability"
    sampling: SamplingConfig
    max_stage_tokens: int
    min_stage_tokens: int
    judge_max_tokens: int
    judge_min_tokens: int
    room: int                       # cache slots after the prompt
    image_token_id: int
    closing: tuple[Tokens, ...]     # "</STAGE>" per stage
    instruction: tuple[Tokens, ...]  # the judge's opening text per stage
    reminder: tuple[Tokens, ...]    # the judge's closing text per stage
    check_parts: tuple[Tokens, ...]  # the pre-check's four fixed texts
    head_image: Tokens
    head_text: Tokens
    tail: Tokens
    question: Tokens
    hint: Tokens
    first: Tokens
    second: Tokens
    verdict_prefix: Tokens
    verdict_ids: tuple[int, int]

    @property
    def candidate_width(self) -> int:
        return self.max_stage_tokens + max(map(len, self.closing))

    @property
    def pair_width(self) -> int:
        """The width of a judge prompt's pair part: both candidates and the fixed texts around them."""
        fixed = (self.first, self.second, self.tail) + ((self.verdict_prefix,) if self.verdict == "probability" else ())
        return sum(map(len, fixed)) + max(map(len, self.reminder)) + 2 * self.candidate_width


@dataclasses.dataclass(frozen=True)
class Masked:
    """Token rows [R, W] with a mask [R, W] (R may be 1: broadcast when concatenated)."""

    tokens: jax.Array
    mask: jax.Array

    @classmethod
    def constant(cls, ids: Tokens) -> "Masked":
        return cls(jnp.asarray(ids, jnp.int32).reshape(1, -1), jnp.ones((1, len(ids)), bool))

    @classmethod
    def per_stage(cls, rows: tuple[Tokens, ...], s: jax.Array) -> "Masked":
        """Row s of the per-stage texts `rows`, padded to the longest (one row, masked)."""
        table = np.zeros((len(rows), max(map(len, rows))), np.int32)
        for i, ids in enumerate(rows):
            table[i, :len(ids)] = ids
        lengths = jnp.asarray([len(ids) for ids in rows])
        return cls(jnp.asarray(table)[s][None], (jnp.arange(table.shape[1]) < lengths[s])[None])

    def rows(self, index: jax.Array) -> "Masked":
        return Masked(self.tokens[index], self.mask[index])

    def where(self, keep: jax.Array) -> "Masked":
        """The same tokens, all masked off unless `keep` (a traced bool)."""
        return Masked(self.tokens, self.mask & keep)


def concat(parts: list[Masked], rows: int) -> tuple[jax.Array, jax.Array]:
    """The segments side by side: tokens and mask [rows, total]; each row reads as its own concatenation."""
    tokens = [jnp.broadcast_to(p.tokens, (rows, p.tokens.shape[1])) for p in parts]
    masks = [jnp.broadcast_to(p.mask, (rows, p.mask.shape[1])) for p in parts]
    return jnp.concatenate(tokens, axis=1), jnp.concatenate(masks, axis=1)


def _left_padded(tokens: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    pad = bucket_length(tokens.shape[1]) - tokens.shape[1]
    return jnp.pad(tokens, ((0, 0), (pad, 0))), jnp.pad(mask, ((0, 0), (pad, 0)))


def stack_stoppings(stoppings: list[Stopping]) -> Stopping:
    """One `Stopping` whose arrays have a leading axis over `stoppings` (one stop string each), their stop-string
    tables padded to common sizes (padded classes and automaton states never match)."""
    strings = [s.strings for s in stoppings]
    r = max(t.length.shape[0] for t in strings)
    size = max(t.state_size for t in strings)
    pad = lambda a, widths: jnp.pad(a, [(0, w - d) for w, d in zip(widths, a.shape)])
    tables = StopStrings(token_class=jnp.stack([t.token_class for t in strings]),
                         length=jnp.stack([pad(t.length, (r,)) for t in strings]),
                         contains=jnp.stack([pad(t.contains, (t.num_strings, r)) for t in strings]),
                         **{name: jnp.stack([pad(getattr(t, name), (t.num_strings, r, size)) for t in strings])
                            for name in ("finish", "advance", "start")})
    return Stopping(jnp.stack([s.token_ids for s in stoppings]), tables,
                    jnp.stack([s.min_new_tokens for s in stoppings]))


class _Work:
    """The device work of one batch, the model's arrays bound (a helper of `search_batch`). Each part runs under a
    named scope of its method's name, which profiles group XLA's ops by (`benchmarks/search.py --profile`)."""

    def __init__(self, plan: StagePlan, params, head, stops: dict, questions: Masked, has_images: bool):
        self.plan, self.params, self.head, self.stops = plan, params, head, stops
        self.questions, self.has_images = questions, has_images
        self.q = questions.tokens.shape[0]

    def decode(self, state, stopping: Stopping, max_tokens: int) -> tuple[Any, Generation]:
        """Decoding from `state` to the end, as `Decoder.run` does it."""
        b = state.batch_size
        width = round_up(max_tokens, ROOM_MULTIPLE)
        gen = Generation(tokens=jnp.zeros((b, width), jnp.int32), logprobs=jnp.zeros((b, width), jnp.float32),
                         lengths=jnp.zeros(b, jnp.int32), finish=jnp.zeros(b, jnp.int32),
                         max_new=jnp.full(b, max_tokens, jnp.int32), matcher=initial_state(stopping.strings, b),
                         stop_string=jnp.full(b, -1, jnp.int32))
        return engine.decode(self.plan.graphdef, self.plan.sampling, self.params, self.head, state, gen, stopping,
                             jnp.asarray(max_tokens, jnp.int32))

    def append(self, state, tokens: jax.Array, mask: jax.Array):
        return engine.append(self.plan.graphdef, self.params, self.head, state, tokens, mask, False)

    def prefill_text(self, tokens: jax.Array, mask: jax.Array, room: int):
        """New text-only prompts (left-padded to their bucket), keys `row_keys(0, rows)` as `Generator.prefill`."""
        tokens, mask = _left_padded(tokens, mask)
        return engine.prefill(self.plan.graphdef, self.params, self.head,
                              dict(input_ids=tokens, attention_mask=mask.astype(jnp.int32)),
                              row_keys(0, tokens.shape[0]), tokens.shape[1] + round_up(room, ROOM_MULTIPLE))

    @jax.named_scope("candidates")
    def candidates(self, prefix, s: jax.Array) -> dict:
        """n candidates per prefix row, stopped at stage s's closing tag; truncated ones get it appended to their
        tokens (their cache rows get it in `selected`, if chosen)."""
        plan = self.plan
        stopping = jax.tree.map(lambda a: a[s], self.stops["stages"])
        state, gen = self.decode(fork(prefix, plan.n), stopping, plan.max_stage_tokens)
        truncated = gen.stop_string < 0
        closing = Masked.per_stage(plan.closing, s)
        c = closing.mask.sum()
        width = closing.tokens.shape[1]
        lengths, t = gen.lengths, plan.max_stage_tokens
        j = jnp.arange(plan.candidate_width)[None]
        from_gen = j < lengths[:, None]
        k = j - lengths[:, None]
        from_closing = truncated[:, None] & (k >= 0) & (k < c)
        generated = jnp.pad(gen.tokens[:, :t], ((0, 0), (0, plan.candidate_width - t)))
        closing_tokens = closing.tokens[0, jnp.clip(k, 0, width - 1)]
        tokens = jnp.where(from_gen, generated, jnp.where(from_closing, closing_tokens, 0))
        logprobs = gen.logprobs[:, :t]
        mean = jnp.where(lengths > 0, logprobs.sum(axis=1) / jnp.maximum(lengths, 1), -jnp.inf)
        return dict(state=state, tokens=tokens, mask=from_gen | from_closing, generated=lengths, truncated=truncated,
                    logprobs=logprobs, logprob=mean)

    @jax.named_scope("selected")
    def selected(self, cands: dict, s: jax.Array, rows: jax.Array):
        """The next prefix: candidates `rows`' cache rows, the truncated ones with stage s's closing tag fed, free
        slots compacted (as `Candidates.select` and `keep` do it)."""
        closing = Masked.per_stage(self.plan.closing, s)
        pad = bucket_length(closing.tokens.shape[1]) - closing.tokens.shape[1]
        tokens, mask = jnp.pad(closing.tokens, ((0, 0), (0, pad))), jnp.pad(closing.mask, ((0, 0), (0, pad)))
        mask = mask & cands["truncated"][rows][:, None]
        state = self.append(select_rows(cands["state"], rows), jnp.broadcast_to(tokens, mask.shape), mask)
        return compact(state)

    @jax.named_scope("judge_base")
    def judge_base(self, prefix, s: jax.Array, hints: list[Masked]):
        """The part of stage s's judge prompts that every pair of a question shares (BOS, header, image,
        instruction, question, hints), prefilled once per question (reading the image K/V)."""
        plan = self.plan
        head = [Masked.constant(plan.head_image if self.has_images else plan.head_text),
                Masked.per_stage(plan.instruction, s), Masked.constant(plan.question), self.questions, *hints]
        room = plan.pair_width + plan.judge_max_tokens
        if not self.has_images:
            return self.prefill_text(*concat(head, self.q), room)
        tokens, mask = _left_padded(*concat(head, self.q))
        return engine.prefill_on_images(plan.graphdef, self.params, self.head, prefix, tokens, mask,
                                        row_keys(0, self.q), tokens.shape[1] + round_up(room, ROOM_MULTIPLE),
                                        plan.image_token_id)

    @jax.named_scope("compare")
    def compare(self, base, s: jax.Array, pairs: int, first: Masked, second: Masked) -> dict:
        """Judges `pairs` pairs per question in one batch, each pair's part of the prompt appended to a fork of its
        question's `base`: verdict [Q * pairs] (1 or 2) and what it was read from."""
        plan = self.plan
        parts = [Masked.constant(plan.first), first, Masked.constant(plan.second), second,
                 Masked.per_stage(plan.reminder, s), Masked.constant(plan.tail)]
        if plan.verdict == "probability":
            parts.append(Masked.constant(plan.verdict_prefix))
        state = self.append(fork(base, pairs), *concat(parts, self.q * pairs))
        if plan.verdict == "probability":
            logits = state.logits[:, jnp.asarray(plan.verdict_ids)]
            probs = jnp.exp(logits - logits.max(axis=1, keepdims=True))
            probs = probs / probs.sum(axis=1, keepdims=True)
            return dict(verdict=jnp.where(probs[:, 0] >= probs[:, 1], 1, 2), probs=probs)
        _, gen = self.decode(state, self.stops["verdicts"], plan.judge_max_tokens)
        found = first_match(self.stops["verdicts"].strings, gen.tokens, gen.lengths)
        return dict(verdict=jnp.where(found == 0, 1, 2), parsed=found >= 0,
                    judge_tokens=gen.tokens[:, :plan.judge_max_tokens], judge_lengths=gen.lengths)

    @jax.named_scope("precheck")
    def precheck(self, cands: dict, caption: Masked) -> dict:
        """The reasoning candidates' text-only check against the chosen caption: correct [Q, n] (not "incorrect").
        The part before the candidate is prefilled once per question and forked."""
        plan = self.plan
        fixed = [Masked.constant(part) for part in plan.check_parts]
        head = [Masked.constant(plan.head_text), fixed[0], caption, fixed[1], self.questions, fixed[2]]
        tokens, mask = concat([Masked(cands["tokens"], cands["mask"]), fixed[3], Masked.constant(plan.tail)],
                              self.q * plan.n)
        state = fork(self.prefill_text(*concat(head, self.q), tokens.shape[1] + plan.judge_max_tokens), plan.n)
        # the same per-row keys as one prefill of the whole prompts would give
        state = self.append(state._replace(keys=row_keys(0, self.q * plan.n)), tokens, mask)
        _, gen = self.decode(state, self.stops["checks"], plan.judge_max_tokens)
        return dict(correct=(gen.stop_string != 0).reshape(self.q, plan.n), check_lengths=gen.lengths)

    def tournament(self, prefix, s: jax.Array, cands: dict, order: jax.Array, chosen: Masked) -> tuple:
        """The knockout over candidates in `order` [Q, n]: each round's pairs judged in one batch, winners go on, an
        odd one out waits; in the reasoning stage, a pair where the pre-check found exactly one candidate
        incorrect goes to the other. Hints: the chosen caption from the reasoning on, the chosen reasoning too in
        the conclusion."""
        plan = self.plan
        caption, reasoning = chosen.rows(1), chosen.rows(2)
        skipped = lambda: dict(correct=jnp.ones((self.q, plan.n), bool), check_lengths=jnp.zeros(self.q * plan.n,
                                                                                                  jnp.int32))
        record = jax.lax.cond(s == REASONING, lambda: self.precheck(cands, caption), skipped)
        hints = [Masked.constant(plan.hint).where(s >= REASONING), caption.where(s >= REASONING),
                 reasoning.where(s == CONCLUSION)]
        base = self.judge_base(prefix, s, hints)
        candidates = Masked(cands["tokens"], cands["mask"])
        offset = (jnp.arange(self.q) * plan.n)[:, None]
        alive, rounds = order, []
        while alive.shape[1] > 1:
            pairs = alive.shape[1] // 2
            a, b = alive[:, 0:2 * pairs:2], alive[:, 1:2 * pairs:2]               # [Q, pairs]
            judged = self.compare(base, s, pairs, candidates.rows((offset + a).reshape(-1)),
                                  candidates.rows((offset + b).reshape(-1)))
            verdict = judged.pop("verdict").reshape(self.q, pairs)
            ca, cb = (jnp.take_along_axis(record["correct"], x, axis=1) for x in (a, b))
            verdict = jnp.where(ca != cb, jnp.where(ca, 1, 2), verdict)
            winners = jnp.where(verdict == 1, a, b)
            rounds.append(dict(judged, pairs=jnp.stack([a, b], axis=-1), winners=winners, by_precheck=ca != cb))
            alive = jnp.concatenate([winners, alive[:, -1:]], axis=1) if alive.shape[1] % 2 else winners
        return alive[:, 0], dict(record, rounds=rounds)


@functools.partial(jax.jit, static_argnums=0)
def search_batch(plan: StagePlan, params, head, inputs: dict, questions: jax.Array, question_mask: jax.Array,
                 key: jax.Array, orders: jax.Array, stops: dict) -> dict:
    """The whole stage search of a batch of Q questions. inputs: bucketed prompt inputs as `Generator.prefill` takes
    them; questions [Q, W] the question tokens, masked; key: `jax.random.PRNGKey(seed)`; orders [4, Q, n] the
    tournament's starting order per stage; stops: "stages" (`stack_stoppings` of the closing tags), "verdicts",
    "checks". Returns arrays with a leading stage axis: the candidates (tokens [Q * n, W] with their closing tags,
    mask, generated lengths, truncated flags, per-token and mean log-probabilities), the winners [Q], and the
    scores or the tournament's record (pre-check outcomes, and per round the pairs, winners and verdicts)."""
    q, n = questions.shape[0], plan.n
    work = _Work(plan, params, head, stops, Masked(questions, question_mask), "pixel_values" in inputs)
    prefix_keys = jax.vmap(lambda r: jax.random.fold_in(key, r))(jnp.arange(q))
    prefix = engine.prefill(plan.graphdef, params, head, inputs, prefix_keys,
                            inputs["input_ids"].shape[1] + round_up(plan.room, ROOM_MULTIPLE))
    width = plan.candidate_width
    chosen = (jnp.zeros((len(STAGES), q, width), jnp.int32), jnp.zeros((len(STAGES), q, width), bool))

    def stage(carry, xs):
        prefix, chosen = carry[0], Masked(*carry[1:])
        s, order = xs
        cands = work.candidates(prefix, s)
        record = {}
        if n == 1:
            winners = jnp.zeros(q, jnp.int32)
        elif plan.judge == "logprob":
            scores = cands["logprob"].reshape(q, n)
            winners, record = jnp.argmax(scores, axis=1).astype(jnp.int32), dict(scores=scores)
        else:
            winners, record = work.tournament(prefix, s, cands, order, chosen)
        rows = jnp.arange(q) * n + winners
        prefix = work.selected(cands, s, rows)
        del cands["state"]
        chosen = (chosen.tokens.at[s].set(cands["tokens"][rows]), chosen.mask.at[s].set(cands["mask"][rows]))
        return (prefix, *chosen), dict(cands, winners=winners, **record)

    _, out = jax.lax.scan(stage, (prefix, *chosen), (jnp.arange(len(STAGES)), orders))
    return out
