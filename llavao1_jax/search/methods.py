"""The search methods on one `Batch`: stage-level beam search, best-of-N, sentence-level beam search, and plain
greedy / sampled answers. Each leaves `batch.chosen` (the chosen token arrays per question) and `batch.steps`."""
from __future__ import annotations

from typing import Optional

import numpy as np

from llavao1_jax import inference
from llavao1_jax.search.batch import Batch
from llavao1_jax.search.candidates import Candidates, sample
from llavao1_jax.search.judges import choose
from llavao1_jax.search.prompts import STAGES

STAGE_TAG_SLACK = 8         # tokens of an appended closing tag
SENTENCE_ENDS = (". ", ".\n")  # a period that ends a sentence: never the one inside "3.5"
CONCLUSION_END = "</CONCLUSION>"


def room(config, method: str) -> int:
    """Cache slots a method needs after the prompt (compaction after every step keeps only the chosen tokens)."""
    if method == "sentence":
        return config.max_sentences * config.max_stage_tokens
    return len(STAGES) * (config.max_stage_tokens + STAGE_TAG_SLACK)


def keep(batch: Batch, cands: Candidates, n: int, winners: np.ndarray, kind: str, judged: list[dict],
         active: Optional[np.ndarray] = None) -> None:
    """Makes each question's winner its new prefix (its cache rows selected, not re-run; free slots compacted) and
    records the step."""
    rows = np.arange(batch.size) * n + winners
    batch.prefix = inference.compact(inference.select_rows(cands.state, rows))
    for q, row in enumerate(rows):
        if active is None or active[q]:
            batch.chosen[q].append(cands.tokens[row])
    batch.steps.append(dict(kind=kind, n=n, candidates=cands, winners=winners, judged=judged, active=active))


def stage_hints(batch: Batch, stage: str) -> Optional[list[np.ndarray]]:
    """What the judge is told besides the question: nothing for summary and caption, the chosen caption for the
    reasoning, the chosen caption and reasoning for the conclusion."""
    if stage == "REASONING":
        return [chosen[1] for chosen in batch.chosen]
    if stage == "CONCLUSION":
        return [np.concatenate(chosen[1:3]) for chosen in batch.chosen]
    return None


def stage_search(batch: Batch) -> None:
    """For each stage: n candidates per question, each stopped at the stage's closing tag; the judge picks one."""
    config = batch.config
    for stage in STAGES:
        close = f"</{stage}>"
        cands = sample(batch, config.n, max_tokens=config.max_stage_tokens, min_tokens=config.min_stage_tokens,
                       stop_strings=(close,), close=close)
        winners, judged = choose(batch, stage, cands, config.n, stage_hints(batch, stage))
        keep(batch, cands, config.n, winners, stage, judged)


def best_of_n(batch: Batch) -> None:
    """n whole answers per question (to the stop token or four stage budgets); the judge picks one."""
    config = batch.config
    budget = len(STAGES) * config.max_stage_tokens
    cands = sample(batch, config.n, max_tokens=budget, min_tokens=len(STAGES) * config.min_stage_tokens,
                   stop_strings=(), close=None, stop_token_ids=None)
    winners, judged = choose(batch, "ANSWER", cands, config.n, None)
    keep(batch, cands, config.n, winners, "ANSWER", judged)


def sentence_search(batch: Batch) -> None:
    """n candidates for each next sentence (to a sentence end, the closing conclusion tag or the stop token); the
    judge picks one; a question is done once its chosen step closes the conclusion or stops."""
    config = batch.config
    active = np.ones(batch.size, bool)
    for _ in range(config.max_sentences):
        cands = sample(batch, config.n, max_tokens=config.max_stage_tokens, min_tokens=config.min_stage_tokens,
                       stop_strings=SENTENCE_ENDS + (CONCLUSION_END,), close=None, stop_token_ids=None)
        winners, judged = choose(batch, "SENTENCE", cands, config.n, None)
        keep(batch, cands, config.n, winners, "SENTENCE", judged, active=active.copy())
        rows = np.arange(batch.size) * config.n + winners
        active &= np.asarray([cands.ended_by[r] != CONCLUSION_END and cands.finish[r] != "stop_token" for r in rows])
        if not active.any():
            return


METHODS = {"stage": stage_search, "best_of_n": best_of_n, "sentence": sentence_search}
