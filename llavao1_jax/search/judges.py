"""Choosing one of n candidates per question: the self-judge's knockout tournament (with the reasoning pre-check),
the mean log-probability, or a user's reward function."""
from __future__ import annotations

from typing import Optional

import numpy as np

from llavao1_jax.inference import DecodeState, bucket_length
from llavao1_jax.search.batch import Batch
from llavao1_jax.search.candidates import Candidates
from llavao1_jax.search.packing import pack
from llavao1_jax.search.prompts import CHECK_PARTS, CHECK_STRINGS, VERDICT_STRINGS, encode, instruction, reminder

def choose(batch: Batch, kind: str, cands: Candidates, n: int,
           hints: Optional[list[np.ndarray]]) -> tuple[np.ndarray, list[dict]]:
    """The winner in [0, n) of each question's candidates, and per question a trace of how it was chosen."""
    q = batch.size
    if n == 1:
        return np.zeros(q, int), [{} for _ in range(q)]
    judge = batch.config.judge
    if judge == "self":
        return tournament(batch, kind, cands, n, hints)
    prefixes = [np.concatenate(c) if c else np.zeros(0, np.int32) for c in batch.chosen]
    scores = score(batch, cands, np.repeat(np.arange(q), n), [prefixes[r // n] for r in range(q * n)]).reshape(q, n)
    return scores.argmax(axis=1), [{"scores": [float(s) for s in row]} for row in scores]


def score(batch: Batch, cands: Candidates, owners: np.ndarray, prefixes: list[np.ndarray]) -> np.ndarray:
    """A score per candidate row: its mean token log-probability (judge "logprob") or
    reward_fn(question, image, prefix_text, candidate_text) (judge "reward"); row r belongs to question owners[r]
    and continues the tokens prefixes[r]."""
    if batch.config.judge == "logprob":
        return cands.mean_logprob()
    texts = batch.decode_texts(cands.tokens)
    prefix_texts = batch.decode_texts(prefixes)
    return np.asarray([float(batch.reward_fn(batch.questions[q], batch.images[q], prefix, text))
                       for q, prefix, text in zip(owners, prefix_texts, texts)])


def tournament(batch: Batch, kind: str, cands: Candidates, n: int,
               hints: Optional[list[np.ndarray]]) -> tuple[np.ndarray, list[dict]]:
    """Knockout: candidates in a random order are paired, each pair judged (all pairs of a round, of every
    question, in one batch), winners go on, an odd one out waits for the next round; n - 1 comparisons."""
    q_count = batch.size
    alive = [list(batch.rng.permutation(n)) for _ in range(q_count)]
    correct = precheck(batch, cands, n, hints) if kind == "REASONING" else None
    base = judge_base(batch, kind, hints, room=judge_room(batch, kind, cands))
    traces = [{"comparisons": [], "precheck": None if correct is None else correct[q].tolist()}
              for q in range(q_count)]
    while len(alive[0]) > 1:
        pairs = [list(zip(a[0:len(a) - 1:2], a[1::2])) for a in alive]
        per_question = len(pairs[0])
        first = [cands.tokens[q * n + a] for q in range(q_count) for a, _ in pairs[q]]
        second = [cands.tokens[q * n + b] for q in range(q_count) for _, b in pairs[q]]
        verdicts, raw = compare(batch, base, kind, per_question, first, second)
        for q in range(q_count):
            winners = []
            for k, (a, b) in enumerate(pairs[q]):
                verdict = verdicts[q * per_question + k]
                by = "judge"
                if correct is not None and correct[q, a] != correct[q, b]:
                    verdict, by = (1 if correct[q, a] else 2), "precheck"
                winners.append(a if verdict == 1 else b)
                traces[q]["comparisons"].append({"pair": [int(a), int(b)], "winner": int(winners[-1]), "by": by,
                                                 "verdict": raw[q * per_question + k]})
            alive[q] = winners + ([alive[q][-1]] if len(alive[q]) % 2 else [])
    return np.asarray([a[0] for a in alive]), traces


def judge_room(batch: Batch, kind: str, cands: Candidates) -> int:
    """Cache room after a judge prompt's per-question head: the longest pair part (two candidates and the fixed
    texts around them, padded as `append_tokens` pads it) and the verdict."""
    segments = batch.segments
    fixed = (segments.first, segments.second, segments.tail, segments.verdict_prefix,
             encode(batch.processor, reminder(kind)))
    longest = sum(len(f) for f in fixed) + 2 * max(len(t) for t in cands.tokens)
    return bucket_length(longest) + batch.config.judge_max_tokens


def judge_base(batch: Batch, kind: str, hints: Optional[list[np.ndarray]], room: int) -> DecodeState:
    """The part of the judge prompts that every pair of a question shares (BOS, user header, image, instruction,
    question, hint), prefilled once per question; with images it reads the questions' image K/V (never
    recomputed)."""
    segments = batch.segments
    head = np.concatenate([segments.head_image if batch.has_images else segments.head_text,
                           encode(batch.processor, instruction(kind)), segments.question])
    parts = [head, batch.question_tokens] + ([segments.hint, hints] if hints else [])
    tokens, mask = pack(parts, batch.size)
    with batch.totals.timed("judge_prefill"):
        batch.totals.judge_prefill_calls += 1
        if batch.has_images:
            return batch.generator.prefill_on_images(batch.prefix, tokens, mask, max_new_tokens=room)
        return batch.generator.prefill(dict(input_ids=tokens, attention_mask=mask.astype(np.int32)),
                                       max_new_tokens=room)


def compare(batch: Batch, base: DecodeState, kind: str, per_question: int, first: list[np.ndarray],
            second: list[np.ndarray]) -> tuple[list[int], list]:
    """Judges `per_question` pairs of every question in one batch: each pair's part of the prompt appended to a
    fork of its question's `base`. Returns each pair's verdict (1 or 2) and what it was read from (the judge's
    text, or the two probabilities)."""
    segments, config = batch.segments, batch.config
    rows = batch.size * per_question
    parts = [segments.first, first, segments.second, second, encode(batch.processor, reminder(kind)), segments.tail]
    if config.verdict == "probability":
        parts.append(segments.verdict_prefix)
    tokens, mask = pack(parts, rows)
    with batch.totals.timed("judge_prefill"):
        state = batch.generator.append_tokens(batch.generator.fork(base, per_question), tokens, mask)
    batch.totals.judge_calls += rows
    if config.verdict == "probability":
        logits = np.asarray(state.logits)[:, list(segments.verdict_ids)]
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        return [1 if p1 >= p2 else 2 for p1, p2 in probs], [[float(p1), float(p2)] for p1, p2 in probs]
    with batch.totals.timed("judge_decoding"):
        result, _ = batch.generator.decode(state, max_new_tokens=config.judge_max_tokens,
                                           min_new_tokens=config.judge_min_tokens, stop_strings=VERDICT_STRINGS,
                                           **batch.sampling())
    batch.totals.judge_tokens += int(result.lengths.sum())
    verdicts = []
    for text in result.texts:
        found = [text.find(s) for s in VERDICT_STRINGS]
        hits = [(at, k + 1) for k, at in enumerate(found) if at >= 0]
        if hits:
            verdicts.append(min(hits)[1])
        else:  # the original code takes response 2 whenever response 1 is not named; we do too, and count it
            batch.totals.unparsed_verdicts += 1
            verdicts.append(2)
    return verdicts, result.texts


def precheck(batch: Batch, cands: Candidates, n: int, hints) -> np.ndarray:
    """The reasoning stage's text-only correctness check of every candidate against the chosen caption [Q, n]
    (True: "correct", or no readable answer)."""
    segments, config = batch.segments, batch.config
    rows = batch.size * n
    fixed = [encode(batch.processor, text) for text in CHECK_PARTS]
    head, head_mask = pack([segments.head_text, fixed[0], [chosen[1] for chosen in batch.chosen], fixed[1],
                            batch.question_tokens, fixed[2]], batch.size)
    tokens, mask = pack([cands.tokens, fixed[3], segments.tail], rows)
    with batch.totals.timed("judge_prefill"):
        batch.totals.judge_prefill_calls += 1
        state = batch.generator.prefill(dict(input_ids=head, attention_mask=head_mask.astype(np.int32)),
                                        max_new_tokens=bucket_length(tokens.shape[1]) + config.judge_max_tokens)
        # the same per-row keys as one prefill of the whole prompts would give
        state = batch.generator.append_tokens(batch.generator.reseed(batch.generator.fork(state, n), 0), tokens,
                                              mask)
    with batch.totals.timed("judge_decoding"):
        result, _ = batch.generator.decode(state, max_new_tokens=config.judge_max_tokens,
                                           min_new_tokens=config.judge_min_tokens, stop_strings=CHECK_STRINGS,
                                           **batch.sampling())
    batch.totals.judge_calls += rows
    batch.totals.judge_tokens += int(result.lengths.sum())
    return np.asarray([s != "incorrect" for s in result.stop_string]).reshape(batch.size, n)
