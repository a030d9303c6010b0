"""The task vocabulary: the token ids that a run's training targets use, plus every special token.

With `config.loss.task_vocab`, the loss takes its softmax over these ids only (the LM head's other columns get no
gradient) and decoding is restricted to them (`lj.Generator(model, allowed_token_ids=ids)`). The model keeps the
full Llama-3 vocabulary and its transformers export is unchanged; the ids are written beside it, so that whoever
decodes the model can restrict it the same way. It is what lets a small model trained for minutes on a CPU learn:
the full 128,256-column head and its gradient otherwise take nearly all of the step.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from llavao1_jax.data import pipeline, records

FILE = "task_vocabulary.json"


def collect(source, processor, answer_format: str, special_ids) -> np.ndarray:
    """Sorted unique int32 ids of the assistant turns of `source`'s records (rendered as `answer_format`), plus
    `special_ids`.

    The turns are tokenised alone, in batches: the chat template puts each after a special token (the assistant
    header), which the tokenizer never merges across, so these are the ids the pipeline trains on (a batch target
    outside them would still be caught, by `remap_targets`)."""
    ids = set(int(i) for i in special_ids)
    answers = []
    for index in tqdm(range(len(source)), desc="task vocabulary", unit=" records", leave=False):
        turns = records.to_sample(source[index]).turns
        answers += [m["content"] for m in pipeline.to_messages(turns, answer_format) if m["role"] == "assistant"]
    for start in range(0, len(answers), 1024):
        for row in processor.tokenizer(answers[start:start + 1024], add_special_tokens=False)["input_ids"]:
            ids.update(row)
    return np.asarray(sorted(ids), np.int32)


def save(ids: np.ndarray, directory: str | Path) -> Path:
    """Writes `directory/task_vocabulary.json`."""
    path = Path(directory) / FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"token_ids": [int(i) for i in ids]}))
    return path


def load(directory: str | Path) -> np.ndarray | None:
    """The ids saved in `directory` (a workdir or an exported model), or None when it has none."""
    path = Path(directory) / FILE
    if not path.exists():
        return None
    try:
        return np.asarray(json.loads(path.read_text())["token_ids"], np.int32)
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a task vocabulary file ({e})") from e


def target_lookup(ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """[vocab_size] int32: the position of each id in `ids`, -1 for ids outside it."""
    lookup = np.full(vocab_size, -1, np.int32)
    lookup[ids] = np.arange(len(ids), dtype=np.int32)
    return lookup


def remap_targets(targets: np.ndarray, weights: np.ndarray, lookup: np.ndarray) -> np.ndarray:
    """Loss targets as positions in the task vocabulary; a trained target outside it is an error."""
    mapped = lookup[targets]
    missing = (mapped < 0) & (weights > 0)
    if missing.any():
        row, column = map(int, np.argwhere(missing)[0])
        raise ValueError(f"batch row {row}: target token id {int(targets[row, column])} is not in the task "
                         f"vocabulary ({int(missing.sum())} such targets); the vocabulary is built from the training "
                         "split, so a held-out split must use the same tokens")
    return np.where(missing | (mapped < 0), 0, mapped).astype(np.int32)
