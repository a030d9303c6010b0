"""The image-blind baseline: the best accuracy without the image, taken as the majority answer of each question
type on the training split, scored on the held-out split."""
from __future__ import annotations

import collections

from llavao1_jax.data import pipeline


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _answers(data_dir, split: str) -> list[tuple[str, str]]:
    """(question_type, answer) of every record of `split` (images not decoded)."""
    source = pipeline.host_source("synthetic_reasoning", split, data_dir, process_index=0, process_count=1)
    return [(_text(source[i]["question_type"]), _text(source[i]["answer"])) for i in range(len(source))]


def majority_answers(data_dir) -> dict[str, str]:
    """The most frequent training answer of each question type (ties: the first in sorted order)."""
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for kind, answer in _answers(data_dir, "train"):
        counts[kind][answer] += 1
    return {kind: min(c, key=lambda a: (-c[a], a)) for kind, c in counts.items()}


def image_blind_accuracy(data_dir, limit: int = 0) -> float:
    """Percent of the held-out questions (the first `limit`, 0: all) that the majority answers get right."""
    majority = majority_answers(data_dir)
    test = _answers(data_dir, "test")
    test = test[:limit] if limit else test
    return 100.0 * sum(majority.get(kind) == answer for kind, answer in test) / max(len(test), 1)
