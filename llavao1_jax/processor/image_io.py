"""Turning what users pass as an image (a PIL image, a uint8 array, a file path, encoded bytes) into an RGB PIL image.

Problems surface here as `FileNotFoundError` / `ValueError` that name the image, never as an error from deep in PIL.
"""
import io
import os
from pathlib import Path
from typing import Union

import numpy as np
import PIL.Image
import PIL.ImageOps

ImageLike = Union[PIL.Image.Image, np.ndarray, str, os.PathLike, bytes]
IMAGE_TYPES = (PIL.Image.Image, np.ndarray, str, os.PathLike, bytes)


def describe(image) -> str:
    """A short name for an image in error messages."""
    if isinstance(image, (str, os.PathLike)):
        return f"image file '{os.fspath(image)}'"
    if isinstance(image, bytes):
        return f"encoded image ({len(image)} bytes)"
    if isinstance(image, np.ndarray):
        return f"array image {image.shape} {image.dtype}"
    if isinstance(image, PIL.Image.Image):
        return f"PIL image {image.mode} {image.width}x{image.height}"
    return f"object of type {type(image).__name__}"


def _decode(source, name: str) -> PIL.Image.Image:
    """Opens and fully decodes an image file or encoded bytes, applying the EXIF orientation."""
    try:
        with PIL.Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            image.load()
            return PIL.ImageOps.exif_transpose(image)
    except PIL.UnidentifiedImageError:
        raise ValueError(f"{name} is not an image PIL can read (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as error:
        raise ValueError(f"{name} could not be decoded: {error}") from None


def load_image(image: ImageLike) -> PIL.Image.Image:
    """Returns `image` as a non-empty PIL image (any mode).

    * PIL images are used as they are (no EXIF rotation, as transformers does for PIL inputs);
    * paths and encoded bytes are decoded completely and turned upright by their EXIF orientation, as
      `transformers.image_utils.load_image` does;
    * arrays must be uint8 `(H, W)`, `(H, W, 3)` or `(H, W, 4)` (grey, RGB, RGBA).

    Raises:
      FileNotFoundError: a path that does not exist.
      ValueError: a file or bytes that are not a readable image, an unsupported array, an image with a zero side, or
        any other type.
    """
    name = describe(image)
    if isinstance(image, (str, os.PathLike)):
        if not Path(image).is_file():
            raise FileNotFoundError(f"{name} does not exist")
        image = _decode(image, name)
    elif isinstance(image, bytes):
        image = _decode(image, name)
    elif isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
            raise ValueError(f"{name}: arrays must be uint8 of shape (H, W), (H, W, 3) or (H, W, 4)")
        if 0 in image.shape:
            raise ValueError(f"{name} has a zero-sized side")
        image = PIL.Image.fromarray(np.ascontiguousarray(image))
    elif not isinstance(image, PIL.Image.Image):
        raise ValueError(f"unsupported image: {name}; pass a PIL image, a uint8 array, a file path or encoded bytes")
    if image.width == 0 or image.height == 0:
        raise ValueError(f"{name} has a zero-sized side")
    return image


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """The image in RGB mode; other modes go through RGBA and are alpha-composited onto white (transparent -> white)."""
    if image.mode == "RGB":
        return image
    try:
        rgba = image.convert("RGBA")
    except ValueError as error:
        raise ValueError(f"{describe(image)} cannot be converted to RGB: {error}") from None
    white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255))
    return PIL.Image.alpha_composite(white, rgba).convert("RGB")
