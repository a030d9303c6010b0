"""What a search returns per question (`SearchResult`) and the counters and clocks of its trace (`Totals`)."""
from __future__ import annotations

import contextlib
import dataclasses
import re
import time

import jax

from llavao1_jax.search.prompts import STAGES

_STAGE_RE = {name: re.compile(f"<{name}>(.*?)</{name}>", re.DOTALL) for name in STAGES}


def stage_texts(text: str) -> dict[str, str]:
    """The text inside each of the four stage tags (the first occurrence, stripped; "" where a tag pair is
    missing)."""
    found = {name: pattern.search(text) for name, pattern in _STAGE_RE.items()}
    return {name: match.group(1).strip() if match else "" for name, match in found.items()}


@dataclasses.dataclass
class SearchResult:
    """One question's answer: `text` (the four tagged stages as written), `stages` (text inside each tag),
    `answer` (the CONCLUSION text, stripped) and `trace` (a JSON-serialisable record of the search)."""

    text: str
    stages: dict[str, str]
    answer: str
    trace: dict

    @classmethod
    def from_text(cls, text: str, trace: dict) -> "SearchResult":
        stages = stage_texts(text)
        return cls(text=text, stages=stages, answer=stages["CONCLUSION"], trace=trace)


TIMERS = ("candidate_decoding", "judge_prefill", "judge_decoding")
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")


@dataclasses.dataclass
class Totals:
    """Counts and seconds of one batch of questions; `as_dict` is `trace["totals"]`."""

    candidate_tokens: int = 0
    judge_tokens: int = 0
    judge_calls: int = 0
    vision_calls: int = 0
    prefill_calls: int = 0
    judge_prefill_calls: int = 0
    unparsed_verdicts: int = 0
    compile_seconds: float = 0.0
    seconds: dict = dataclasses.field(default_factory=lambda: dict.fromkeys(TIMERS, 0.0))

    @contextlib.contextmanager
    def counting_compiles(self):
        """Adds the tracing, lowering and compiling time of every jitted call inside to `compile_seconds`."""
        def listener(event, duration, **kwargs):
            if event in COMPILE_EVENTS:
                self.compile_seconds += duration

        jax.monitoring.register_event_duration_secs_listener(listener)
        try:
            yield
        finally:
            jax.monitoring.unregister_event_duration_listener(listener)

    @contextlib.contextmanager
    def timed(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    def as_dict(self, total_seconds: float) -> dict:
        """The counters, `seconds` (wall time), `compile_seconds` and a `breakdown` of the wall time."""
        spent = {k: round(v, 4) for k, v in self.seconds.items()}
        spent["other"] = round(max(total_seconds - sum(self.seconds.values()), 0.0), 4)
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "seconds"}
        return dict(out, compile_seconds=round(self.compile_seconds, 4), seconds=round(total_seconds, 4),
                    breakdown=spent)
