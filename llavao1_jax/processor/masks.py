"""Which text tokens may attend to which image tiles: Mllama's `cross_attention_mask`.

Each `<|image|>` token opens a span that runs up to (not including) the next `<|image|>` token, the last one to the
end of the sequence; images whose tokens are consecutive form a group and all attend to the end of the group's span.
Tokens before the first `<|image|>` (BOS, header tokens, left padding) attend to no image. Within a span a token
attends to the image's real tiles only. Same results as transformers 4.54.1 `MllamaProcessor`.
"""
from collections.abc import Sequence

import numpy as np


def image_spans(input_ids: Sequence[int] | np.ndarray, image_token_id: int) -> list[tuple[int, int]]:
    """`[(start, end), ...]` per `<|image|>` token of one sequence: the positions `start <= t < end` that see it."""
    ids = np.asarray(input_ids)
    starts = np.flatnonzero(ids == image_token_id).tolist()
    ends = starts[1:] + [len(ids)]
    for index in range(len(starts) - 2, -1, -1):  # consecutive image tokens share the span of the group's last one
        if starts[index + 1] == starts[index] + 1:
            ends[index] = ends[index + 1]
    return list(zip(starts, ends))


def cross_attention_mask(
    input_ids: np.ndarray,
    num_tiles: Sequence[Sequence[int]],
    image_token_id: int,
    max_image_tiles: int,
    max_images: int | None = None,
) -> np.ndarray:
    """The dense cross-attention mask of a batch.

    Args:
      input_ids: `[B, S]` token ids (after padding; padding on either side).
      num_tiles: per sample, the number of real tiles of each of its images, in `<|image|>` order.
      image_token_id: id of `<|image|>` (128256).
      max_image_tiles: length of the tile axis (the image processor's `max_image_tiles`).
      max_images: length of the image axis; default: the most images in a sample.

    Returns:
      int64 `[B, S, max_images, max_image_tiles]`, 1 where token s of sample b may attend to tile t of image i.

    Raises:
      ValueError: a sample whose `<|image|>` count differs from its number of images, or a tile count out of range.
    """
    input_ids = np.asarray(input_ids)
    if input_ids.ndim != 2 or len(num_tiles) != input_ids.shape[0]:
        raise ValueError(f"input_ids must be [batch, length] with one num_tiles list per row; got {input_ids.shape} "
                         f"and {len(num_tiles)} num_tiles lists")
    most = max((len(tiles) for tiles in num_tiles), default=0)
    if max_images is None:
        max_images = most
    elif most > max_images:
        raise ValueError(f"a sample has {most} images but max_images is {max_images}")
    mask = np.zeros((*input_ids.shape, max_images, max_image_tiles), dtype=np.int64)
    for row, (ids, tiles) in enumerate(zip(input_ids, num_tiles)):
        spans = image_spans(ids, image_token_id)
        if len(spans) != len(tiles):
            raise ValueError(f"sample {row} has {len(spans)} <|image|> tokens but {len(tiles)} images")
        for image, ((start, end), count) in enumerate(zip(spans, tiles)):
            if not 1 <= count <= max_image_tiles:
                raise ValueError(f"sample {row}, image {image}: {count} tiles, expected 1..{max_image_tiles}")
            mask[row, start:end, image, :count] = 1
    return mask
