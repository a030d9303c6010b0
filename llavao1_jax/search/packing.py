"""Ragged token segments laid side by side into one padded array with a mask, ready for `append_tokens`."""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np

Segment = Union[np.ndarray, Sequence[np.ndarray]]


def pack(segments: Sequence[Segment], rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Concatenates, per row, a sequence of segments; each segment is one token array shared by every row or a list
    of `rows` arrays. Returns tokens [rows, total] int32 and mask [rows, total] bool, each segment padded to its
    longest row (the mask leaves the padding out, so every row reads as its own concatenation)."""
    blocks, masks = [], []
    for segment in segments:
        if isinstance(segment, np.ndarray):
            segment = [segment] * rows
        if len(segment) != rows:
            raise ValueError(f"a segment has {len(segment)} rows, expected {rows}")
        width = max((len(s) for s in segment), default=0)
        block = np.zeros((rows, width), np.int32)
        mask = np.zeros((rows, width), bool)
        for r, s in enumerate(segment):
            block[r, :len(s)], mask[r, :len(s)] = s, True
        blocks.append(block)
        masks.append(mask)
    return np.concatenate(blocks, axis=1), np.concatenate(masks, axis=1)
