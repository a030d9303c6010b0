"""Geometry of Mllama's tiled canvases: which tile grid an image gets and the size it is resized to.

A grid is `(tiles_high, tiles_wide)`; the canvas is the grid times the (square) tile size. Every formula keeps the
order of floating-point operations of transformers 4.54.1 `MllamaImageProcessor`, so the chosen grid and size agree
with it for every image size.
"""
import functools
import math


@functools.lru_cache(maxsize=16)
def supported_grids(max_image_tiles: int) -> tuple[tuple[int, int], ...]:
    """All grids with at most `max_image_tiles` tiles, in aspect-ratio-id order (id = index + 1; 0 is padding).

    For 4 tiles: (1,1) (1,2) (1,3) (1,4) (2,1) (2,2) (3,1) (4,1).
    """
    if max_image_tiles < 1:
        raise ValueError(f"max_image_tiles must be a positive integer, got {max_image_tiles}")
    return tuple(
        (high, wide)
        for high in range(1, max_image_tiles + 1)
        for wide in range(1, max_image_tiles + 1)
        if high * wide <= max_image_tiles
    )


def aspect_ratio_id(grid: tuple[int, int], max_image_tiles: int) -> int:
    """The model's aspect-ratio id of a grid: its 1-based position in `supported_grids(max_image_tiles)`."""
    return supported_grids(max_image_tiles).index(tuple(grid)) + 1


@functools.lru_cache(maxsize=4096)
def best_grid(height: int, width: int, tile_size: int, max_image_tiles: int) -> tuple[int, int]:
    """The tile grid whose canvas fits an image best.

    The image scale for a canvas is the limiting one, `min(canvas_h / h, canvas_w / w)`. If some canvas lets the image
    grow (scale >= 1) the smallest such scale wins, otherwise the largest (least shrinking) one; among canvases with the
    winning scale the smallest area wins, and after that the first in id order.
    """
    grids = supported_grids(max_image_tiles)
    scales = []
    for high, wide in grids:
        scale_h, scale_w = high * tile_size / height, wide * tile_size / width
        scales.append(scale_h if scale_w > scale_h else scale_w)
    growing = [scale for scale in scales if scale >= 1]
    chosen = min(growing) if growing else max(scales)
    candidates = [grid for grid, scale in zip(grids, scales) if scale == chosen]
    return min(candidates, key=lambda grid: grid[0] * grid[1])


def resized_size(height: int, width: int, grid: tuple[int, int], tile_size: int) -> tuple[int, int]:
    """`(new_height, new_width)` of an image placed on the canvas of `grid`, aspect ratio kept.

    Each side is first aimed at its own size clipped to `[tile_size, canvas side]` (small images grow to a tile, big
    ones shrink to the canvas); the side that needs the smaller scale takes its target and the other side follows by
    that scale, rounded down, at least 1 and at most its own target.
    """
    canvas_h, canvas_w = grid[0] * tile_size, grid[1] * tile_size
    target_h = min(max(height, tile_size), canvas_h)
    target_w = min(max(width, tile_size), canvas_w)
    scale_h, scale_w = target_h / height, target_w / width
    if scale_w < scale_h:
        return min(math.floor(height * scale_w) or 1, target_h), target_w
    return target_h, min(math.floor(width * scale_h) or 1, target_w)
