"""`Batch`: one batch of questions being searched, with everything the steps share (the generator, the judge's
token segments, the question tokens, the prefix state, the counters)."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import numpy as np

from llavao1_jax.inference import DecodeState, Generator
from llavao1_jax.search.config import SearchConfig
from llavao1_jax.search.prompts import Segments
from llavao1_jax.search.result import Totals


@dataclasses.dataclass
class Batch:
    """Q questions searched together. `prefix` holds one row per question (prompt and the steps chosen so far);
    `chosen[q]` are the token arrays of question q's chosen steps, in order."""

    generator: Generator
    processor: Any
    config: SearchConfig
    segments: Segments
    questions: list[str]
    images: list                      # PIL images or None
    question_tokens: list[np.ndarray]
    prefix: Optional[DecodeState]
    rng: np.random.Generator
    reward_fn: Optional[Callable] = None
    totals: Totals = dataclasses.field(default_factory=Totals)
    chosen: list = dataclasses.field(default_factory=list)
    steps: list = dataclasses.field(default_factory=list)   # the trace of every step

    @property
    def size(self) -> int:
        return len(self.questions)

    @property
    def has_images(self) -> bool:
        return self.images[0] is not None

    def decode_texts(self, rows: list[np.ndarray]) -> list[str]:
        """Texts of token arrays (special tokens kept out)."""
        return self.processor.tokenizer.batch_decode([r.tolist() for r in rows], skip_special_tokens=True)

    def sampling(self) -> dict:
        """The decode options every sampled call uses."""
        return dict(do_sample=True, temperature=self.config.temperature, top_p=self.config.top_p,
                    processor=self.processor)
