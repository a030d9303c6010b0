"""SWIRES, the stage-wise retracing search of the paper's v6, on scores (reward or log-probability): one summary;
then rounds of m captions (the best `keep` stay) and two reasonings from each, pooled across rounds, until the
second-best pooled reasoning scores above reward_mean + z * reward_std or `rounds` rounds ran; then one conclusion
for each of the best `conclusions` pooled reasonings, and the best of those."""
from __future__ import annotations

import numpy as np

from llavao1_jax.search.batch import Batch
from llavao1_jax.search.candidates import keep, sample
from llavao1_jax.search.judges import score
from llavao1_jax.search.packing import pack

REASONINGS_PER_CAPTION = 2


def swires(batch: Batch) -> None:
    """Runs SWIRES on one batch (module docstring)."""
    config, constants = batch.config, batch.config.swires
    q_count = batch.size
    step = dict(max_tokens=config.max_stage_tokens, min_tokens=config.min_stage_tokens)
    summary = sample(batch, 1, stop_strings=("</SUMMARY>",), close="</SUMMARY>", **step)
    keep(batch, summary, 1, np.zeros(q_count, int), "SUMMARY", [{} for _ in range(q_count)])
    summaries = [chosen[0] for chosen in batch.chosen]
    threshold = constants.reward_mean + constants.z * constants.reward_std
    pool = [[] for _ in range(q_count)]            # (score, caption tokens, reasoning tokens) per question
    rounds = []
    for round_index in range(constants.rounds):
        captions = sample(batch, constants.m, stop_strings=("</CAPTION>",), close="</CAPTION>", **step)
        owners = np.repeat(np.arange(q_count), constants.m)
        caption_scores = score(batch, captions, owners, [summaries[q] for q in owners]).reshape(q_count, constants.m)
        best = np.argsort(-caption_scores, axis=1, kind="stable")[:, :constants.keep]
        rows = (np.arange(q_count)[:, None] * constants.m + best).reshape(-1)
        kept = captions.select(batch.generator, rows, copies=constants.keep)
        reasonings = sample(batch, REASONINGS_PER_CAPTION, stop_strings=("</REASONING>",), close="</REASONING>",
                            prefix=kept, **step)
        per_question = constants.keep * REASONINGS_PER_CAPTION
        parents = np.repeat(rows, REASONINGS_PER_CAPTION)
        owners = parents // constants.m
        reasoning_scores = score(batch, reasonings, owners,
                                 [np.concatenate([summaries[q], captions.tokens[c]]) for q, c in zip(owners, parents)])
        for r, (q, c) in enumerate(zip(owners, parents)):
            pool[q].append((float(reasoning_scores[r]), captions.tokens[c], reasonings.tokens[r]))
        second = np.asarray([sorted((entry[0] for entry in entries), reverse=True)[1] if len(entries) > 1
                             else -np.inf for entries in pool])
        rounds.append({"caption_scores": caption_scores.tolist(),
                       "reasoning_scores": reasoning_scores.reshape(q_count, per_question).tolist(),
                       "second_best": second.tolist()})
        if (second > threshold).all():
            break
    conclude(batch, pool, summaries, rounds, threshold)


def conclude(batch: Batch, pool: list, summaries: list, rounds: list, threshold: float) -> None:
    """One conclusion for each of the best pooled reasonings (caption and reasoning teacher-forced onto the
    summary), and the best of them by score."""
    config, constants = batch.config, batch.config.swires
    q_count = batch.size
    count = min(constants.conclusions, min(len(entries) for entries in pool))
    best = [sorted(entries, key=lambda entry: -entry[0])[:count] for entries in pool]
    forced = [np.concatenate([caption, reasoning]) for entries in best for _, caption, reasoning in entries]
    tokens, mask = pack([forced], q_count * count)
    start = batch.generator.fork(batch.prefix, count)
    with batch.totals.timed("candidate_decoding"):
        start = batch.generator.append_tokens(start, tokens, mask)
    conclusions = sample(batch, 1, max_tokens=config.max_stage_tokens, min_tokens=config.min_stage_tokens,
                         stop_strings=("</CONCLUSION>",), close="</CONCLUSION>", prefix=start)
    owners = np.repeat(np.arange(q_count), count)
    scores = score(batch, conclusions, owners, [np.concatenate([summaries[q], f]) for q, f in zip(owners, forced)])
    winners = scores.reshape(q_count, count).argmax(axis=1)
    for q, winner in enumerate(winners):
        _, caption, reasoning = best[q][winner]
        batch.chosen[q] += [caption, reasoning, conclusions.tokens[q * count + winner]]
    batch.steps.append(dict(kind="SWIRES", n=count, candidates=conclusions, winners=winners, active=None,
                            judged=[{"rounds": [{k: v[q] for k, v in r.items()} for r in rounds],
                                     "threshold": threshold,
                                     "conclusion_scores": scores.reshape(q_count, count)[q].tolist()}
                                    for q in range(q_count)]))
