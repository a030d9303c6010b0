"""`SearchConfig`: how an answer is searched for (method, candidates, judge, budgets, sampling, SWIRES constants)."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence, Union

METHODS = ("greedy", "sample", "best_of_n", "sentence", "stage", "swires")
JUDGES = ("self", "logprob", "reward")
VERDICTS = ("generate", "probability")

RewardFn = Callable[[str, Any, str, str], float]


@dataclasses.dataclass(frozen=True)
class SwiresConfig:
    """SWIRES (the paper's v6): one summary, `m` captions of which the best `keep` stay, two reasonings from each
    into a pool kept across rounds, retrace until the second-best pooled score passes reward_mean + z * reward_std
    or `rounds` rounds ran, then one conclusion for each of the best `conclusions` reasonings."""

    m: int = 4
    keep: int = 2
    rounds: int = 3
    z: float = 0.2533
    reward_mean: float = -0.77
    reward_std: float = 2.08
    conclusions: int = 3

    def __post_init__(self):
        if not (self.keep >= 1 and self.m >= self.keep and self.rounds >= 1 and self.conclusions >= 1):
            raise ValueError(f"SwiresConfig needs m >= keep >= 1, rounds >= 1 and conclusions >= 1, got {self}")


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Every setting of `lj.search`; the defaults are the paper's where it has one.

    method: "greedy", "sample", "best_of_n", "sentence", "stage" (the paper's stage-level beam search) or "swires".
    n: candidates per step (per stage, per sentence, or whole answers for best-of-N).
    judge: "self" (the model compares two candidates, a knockout tournament of n - 1 comparisons), "logprob" (the
      candidate with the highest mean token log-probability) or "reward" (`reward_fn`).
    verdict: for the self-judge, "generate" (it writes "Since ..., I choose response k.") or "probability" (the
      next-token probabilities of "1" and "2" right after "I choose response").
    temperature, top_p: sampling of every call, candidates and judge alike.
    max_stage_tokens, min_stage_tokens: budget of one stage (or sentence) per candidate; a whole answer gets four.
    judge_max_tokens, judge_min_tokens: budget of one generated verdict.
    swires: the `SwiresConfig` constants.
    max_sentences: steps of the sentence-level search before the answer is closed.
    seed: PRNG seed of sampling and of the tournament's pairing.
    batch_questions: questions searched together (None: all of them).
    reward_fn: `(question, image, prefix_text, candidate_text) -> float` for judge="reward" (or a list of them, one
      per question batch).
    one_jit: run the whole search of a batch as one jitted function where the method and judge allow it (method
      "stage" with judge "logprob" or "self"); False: the stepwise path (a few jitted calls per stage).
    """

    method: str = "stage"
    n: int = 4
    judge: str = "self"
    verdict: str = "generate"
    temperature: float = 0.6
    top_p: float = 0.9
    max_stage_tokens: int = 256
    min_stage_tokens: int = 0
    judge_max_tokens: int = 128
    judge_min_tokens: int = 0
    swires: SwiresConfig = SwiresConfig()
    max_sentences: int = 16
    seed: int = 0
    batch_questions: Optional[int] = None
    reward_fn: Optional[Union[RewardFn, Sequence[RewardFn]]] = None
    one_jit: bool = True

    def __post_init__(self):
        def check(ok: bool, message: str):
            if not ok:
                raise ValueError(f"SearchConfig: {message}")

        check(self.method in METHODS, f"unknown method {self.method!r}; expected one of {METHODS}")
        check(self.judge in JUDGES, f"unknown judge {self.judge!r}; expected one of {JUDGES}")
        check(self.verdict in VERDICTS, f"unknown verdict {self.verdict!r}; expected one of {VERDICTS}")
        check(isinstance(self.n, int) and self.n >= 1, f"n must be an int >= 1, got {self.n!r}")
        check(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        check(0 < self.top_p <= 1, f"top_p must lie in (0, 1], got {self.top_p}")
        check(1 <= self.max_stage_tokens, f"max_stage_tokens must be >= 1, got {self.max_stage_tokens}")
        check(0 <= self.min_stage_tokens <= self.max_stage_tokens,
              f"min_stage_tokens must lie in [0, max_stage_tokens], got {self.min_stage_tokens}")
        check(1 <= self.judge_max_tokens, f"judge_max_tokens must be >= 1, got {self.judge_max_tokens}")
        check(0 <= self.judge_min_tokens <= self.judge_max_tokens,
              f"judge_min_tokens must lie in [0, judge_max_tokens], got {self.judge_min_tokens}")
        check(self.batch_questions is None or self.batch_questions >= 1,
              f"batch_questions must be None or >= 1, got {self.batch_questions}")
        check(self.judge != "reward" or self.reward_fn is not None, 'judge="reward" needs reward_fn')
        check(self.method != "swires" or self.judge in ("reward", "logprob"),
              'method="swires" scores with judge="reward" or "logprob"')
        check(self.max_sentences >= 1, f"max_sentences must be >= 1, got {self.max_sentences}")

    @classmethod
    def from_dict(cls, fields: dict, **extra) -> "SearchConfig":
        """A config from plain fields (e.g. `configs/search.py`'s ConfigDict `.to_dict()`), `swires` as a dict;
        unknown keys raise. `extra` adds fields that are not plain values (reward_fn)."""
        fields = dict(fields, **extra)
        unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"SearchConfig has no fields {unknown}")
        if isinstance(fields.get("swires"), dict):
            fields["swires"] = SwiresConfig(**fields["swires"])
        return cls(**fields)

    def replace(self, **changes) -> "SearchConfig":
        """A copy with `changes` applied (validated again)."""
        return dataclasses.replace(self, **changes)
