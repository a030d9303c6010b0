"""Decoding a benchmark's images: base64 text or a file path, to RGB PIL images (optionally through the paper-era JPEG
round trip)."""
from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path

from PIL import Image


def to_rgb(image: Image.Image, jpeg_round_trip: bool = False) -> Image.Image:
    """Converts to RGB as VLMEvalKit does; with `jpeg_round_trip`, re-encodes as JPEG at PIL's default quality and
    decodes again (the paper-era VLMEvalKit saved each image as `{index}.jpg` before the model read it)."""
    image = image.convert("RGB")
    if jpeg_round_trip:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG")
        image = Image.open(io.BytesIO(buffer.getvalue()))
        image.load()
    return image


def decode_base64(text: str, jpeg_round_trip: bool = False) -> Image.Image:
    """The RGB image held by base64 `text`; raises ValueError when it is not a decodable image."""
    try:
        image = Image.open(io.BytesIO(base64.b64decode(text, validate=False)))
        image.load()
    except (binascii.Error, OSError, ValueError) as error:
        raise ValueError(f"undecodable base64 image ({error})") from None
    return to_rgb(image, jpeg_round_trip)


def open_path(path: str | Path, jpeg_round_trip: bool = False) -> Image.Image:
    """The RGB image at `path`; raises ValueError when it is missing or not an image."""
    try:
        image = Image.open(path)
        image.load()
    except OSError as error:
        raise ValueError(f"unreadable image file {str(path)!r} ({error})") from None
    return to_rgb(image, jpeg_round_trip)
