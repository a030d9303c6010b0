"""A split of the built synthetic reasoning dataset (llavao1_jax.data.synthetic_reasoning) as a benchmark TSV in
VLMEvalKit's layout, read back as kind `synthetic_reasoning`:

    index  question  answer  category  A  B  C  D  id  image

- `question` is the first human turn exactly as the trainer shows it (choice questions carry their options in it),
  so the runner's prompt (image first, then this text, through the chat template) is the training prompt;
- `answer` is the conclusion: an option letter, a number, or Yes / No;
- `category` is the question type; `A`..`D` hold the option texts of choice questions (empty for open ones);
- `id` is the record's id; `image` its stored PNG, base64-encoded.
"""
from __future__ import annotations

import base64
import string
from pathlib import Path

import pandas as pd

from llavao1_jax.evaluate.api import write_atomic

COLUMNS = ("index", "question", "answer", "category", "A", "B", "C", "D", "id", "image")


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def benchmark_row(index: int, record: dict) -> dict:
    """One TSV row for a record as `tfds.data_source` returns it (text as bytes)."""
    turns = record["conversations"]
    if _text(turns["from"][0]) != "human":
        raise ValueError(f"record {_text(record['id'])!r}: the first turn is not the human's question")
    choices = [_text(c) for c in record["choices"]]
    if len(choices) > 4:
        raise ValueError(f"record {_text(record['id'])!r}: {len(choices)} choices, at most 4 fit columns A-D")
    options = dict(zip(string.ascii_uppercase, choices))
    return {"index": index, "question": _text(turns["value"][0]), "answer": _text(record["answer"]),
            "category": _text(record["question_type"]), **{k: options.get(k, "") for k in "ABCD"},
            "id": _text(record["id"]), "image": base64.b64encode(bytes(record["image"])).decode()}


def write_synthetic_benchmark(data_dir: str | Path, path: str | Path, split: str = "test",
                              limit: int | None = None) -> Path:
    """Writes `split` of the synthetic reasoning dataset in the TFDS `data_dir` (built by
    `llavao1_jax.data.build.build_synthetic_reasoning`) to the TSV `path` (the first `limit` records when given),
    whole or not at all. Name the file `synthetic_reasoning*.tsv` so that its kind is recognised."""
    import tensorflow_datasets as tfds  # only here: reading benchmarks and scoring need no TFDS

    if not tfds.builder("synthetic_reasoning", data_dir=str(data_dir)).is_prepared():
        raise ValueError(f"{data_dir}: holds no built synthetic_reasoning dataset (build it with python -m "
                         f"llavao1_jax.data.build synthetic_reasoning ... --data-dir {data_dir})")
    try:
        source = tfds.data_source("synthetic_reasoning", split=split, data_dir=str(data_dir))
    except ValueError as error:  # an unknown split
        raise ValueError(f"{data_dir}: no synthetic_reasoning split {split!r} to read ({error})") from None
    count = len(source) if limit is None else min(limit, len(source))
    table = pd.DataFrame([benchmark_row(i, source[i]) for i in range(count)], columns=list(COLUMNS))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, table.to_csv(sep="\t", index=False))
    return path
