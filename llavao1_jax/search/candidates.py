"""Sampling the candidates of one step: n forked rows per question, each stopped at its step's end; a candidate
that never reaches it within its budget is marked truncated and gets the closing text appended: to its tokens at
once, to its cache rows only if it is selected (one append for the winners, not one for all n candidates)."""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from llavao1_jax.inference import DecodeState, Generator
from llavao1_jax.search.batch import Batch
from llavao1_jax.search.packing import pack
from llavao1_jax.search.prompts import encode


@dataclasses.dataclass
class Candidates:
    """Q x n candidates (row q * n + i is candidate i of question q) and the decode state after them."""

    tokens: list[np.ndarray]        # each row's tokens, the appended closing text included
    logprobs: list[np.ndarray]      # the generated tokens' log-probabilities
    truncated: np.ndarray           # [Q * n] bool
    ended_by: list[Optional[str]]   # the stop string that ended each row
    finish: list[str]               # each row's finish reason
    state: Optional[DecodeState]    # None when the whole search ran as one jitted function; closing text not fed
    closing: Optional[np.ndarray] = None   # the text truncated rows get appended

    def select(self, generator: Generator, rows: np.ndarray, copies: int = 1) -> DecodeState:
        """The decode state of candidates `rows` (`select_rows`), truncated ones with their closing text fed."""
        state = generator.select_rows(self.state, rows, copies=copies)
        truncated = self.truncated[rows]
        if self.closing is None or not truncated.any():
            return state
        appended, mask = pack([self.closing], len(rows))
        return generator.append_tokens(state, appended, mask & truncated[:, None])

    def mean_logprob(self) -> np.ndarray:
        return np.asarray([lp.mean() if len(lp) else -np.inf for lp in self.logprobs])


def sample(batch: Batch, n: int, *, max_tokens: int, min_tokens: int, stop_strings: Sequence[str],
           close: Optional[str], stop_token_ids=(), prefix: Optional[DecodeState] = None) -> Candidates:
    """n candidates per row of `prefix` (default `batch.prefix`; it stays valid), ending at one of `stop_strings`;
    rows that end otherwise get `close` appended (None: nothing appended, e.g. a whole answer ended by its stop
    token; the cache gets it when a row is selected, `Candidates.select`)."""
    with batch.totals.timed("candidate_decoding"):
        forked = batch.generator.fork(batch.prefix if prefix is None else prefix, n)
        result, state = batch.generator.decode(forked, max_new_tokens=max_tokens, min_new_tokens=min_tokens,
                                               stop_token_ids=stop_token_ids, stop_strings=tuple(stop_strings),
                                               **batch.sampling())
        tokens = [row[:length] for row, length in zip(result.tokens, result.lengths)]
        logprobs = [row[:length] for row, length in zip(result.logprobs, result.lengths)]
        truncated = np.asarray([s is None for s in result.stop_string]) if close is not None else np.zeros(
            len(tokens), bool)
        closing = None if close is None else encode(batch.processor, close)
        if truncated.any():
            tokens = [np.concatenate([t, closing]) if cut else t for t, cut in zip(tokens, truncated)]
    batch.totals.candidate_tokens += int(result.lengths.sum())
    return Candidates(tokens=tokens, logprobs=logprobs, truncated=truncated, ended_by=list(result.stop_string),
                      finish=list(result.finish_reason), state=state, closing=closing)


def keep(batch: Batch, cands: Candidates, n: int, winners: np.ndarray, kind: str, judged: list[dict],
         active: Optional[np.ndarray] = None) -> None:
    """Makes each question's winner its new prefix (its cache rows selected, not re-run; free slots compacted) and
    records the step."""
    rows = np.arange(batch.size) * n + winners
    with batch.totals.timed("candidate_decoding"):
        batch.prefix = batch.generator.compact(cands.select(batch.generator, rows))
    for q, row in enumerate(rows):
        if active is None or active[q]:
            batch.chosen[q].append(cands.tokens[row])
    batch.steps.append(dict(kind=kind, n=n, candidates=cands, winners=winners, judged=judged, active=active))
    if batch.on_step is not None:
        batch.on_step(kind)
