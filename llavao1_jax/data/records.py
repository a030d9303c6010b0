"""The record schema shared by every dataset the SFT pipeline reads.

Each record holds the image as its original encoded bytes (decoded with PIL in the pipeline, so no TensorFlow is needed to
read it) and a LLaVA-style conversation: alternating "human"/"gpt" turns, the gpt turns in the tagged four-stage format
(or a self-judge's reply, see `formats.is_judge_reply`), without the `<image>` placeholder (the image goes at the start of
the first user turn).
"""
import dataclasses

import numpy as np
import tensorflow_datasets as tfds

HUMAN, GPT = "human", "gpt"


def common_features() -> dict:
    """TFDS features every dataset has: id, image bytes, image size, source, conversation."""
    return {
        "id": tfds.features.Text(),
        "image": tfds.features.Tensor(shape=(), dtype=np.object_),  # the encoded file (PNG, JPEG, ...), untouched
        "height": tfds.features.Scalar(dtype=np.int32),
        "width": tfds.features.Scalar(dtype=np.int32),
        "source": tfds.features.Text(),
        "conversations": tfds.features.Sequence({"from": tfds.features.Text(), "value": tfds.features.Text()}),
    }


@dataclasses.dataclass(frozen=True)
class Sample:
    """A record read back from a data source: image bytes, (role, text) turns, and the first user turn's text in
    pieces tokenised one by one (its optional "prompt_parts" field; empty: the turn is one text)."""

    id: str
    image: bytes
    turns: tuple[tuple[str, str], ...]
    prompt_parts: tuple[str, ...] = ()


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def to_sample(record: dict) -> Sample:
    """Convert a record as returned by `tfds.data_source` (text as bytes) into a `Sample`."""
    conv = record["conversations"]
    turns = tuple((_text(role), _text(value)) for role, value in zip(conv["from"], conv["value"]))
    return Sample(id=_text(record["id"]), image=bytes(record["image"]), turns=turns,
                  prompt_parts=tuple(_text(part) for part in record.get("prompt_parts", ())))
