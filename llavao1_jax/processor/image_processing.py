"""Mllama image preprocessing in numpy/PIL, identical to transformers 4.54.1 `MllamaImageProcessor`.

One image: RGB (alpha on white) -> best tile grid -> PIL resize to fit the canvas -> zero padding bottom/right ->
rescale and normalise -> row-major tiles `[tiles, 3, tile, tile]` float32. A batch: nested lists of images ->
`pixel_values [B, max_images, max_image_tiles, 3, tile, tile]` (missing tiles and images exactly 0),
`aspect_ratio_ids [B, max_images]` (0 for padding images), `aspect_ratio_mask [B, max_images, max_image_tiles]`
(tile 0 always 1, as transformers does).

Speed: rescaling and normalising a uint8 value is a 256-entry table per channel, computed with the same float64 ->
float32 steps as transformers, so a lookup (`np.take`) gives bit-identical values; tiles are written straight into the
batch array; `num_workers > 1` spreads images over threads (PIL's resize and numpy's take release the GIL).
"""
import dataclasses
import functools
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
import PIL.Image

from llavao1_jax.processor import tiling
from llavao1_jax.processor.image_io import IMAGE_TYPES, ImageLike, load_image, to_rgb

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CONFIG_NAME = "preprocessor_config.json"
# Settings of transformers' processor that this implementation fixes; a config asking otherwise is refused.
_REQUIRED_TRUE = ("do_convert_rgb", "do_resize", "do_pad")


class TiledImage(NamedTuple):
    """One preprocessed image: float32 `tiles [grid_h * grid_w, 3, tile, tile]` and `grid (tiles_high, tiles_wide)`."""

    tiles: np.ndarray
    grid: tuple[int, int]

    @property
    def num_tiles(self) -> int:
        """Number of real tiles (the rest of the model's tile slots are padding)."""
        return self.tiles.shape[0]


def nest_images(images) -> list[list[ImageLike]]:
    """Images as one list per sample, with transformers' reading of the input.

    A single image is one sample with one image; a flat list is ONE sample with several images; a list of lists is one
    list per sample (a sample may be empty); a 4-D array is one sample whose images are its first axis.
    """
    def is_image(item):
        return isinstance(item, IMAGE_TYPES) and not (isinstance(item, np.ndarray) and item.ndim == 4)

    if isinstance(images, np.ndarray) and images.ndim == 4:
        return [list(images)]
    if is_image(images):
        return [[images]]
    if isinstance(images, (list, tuple)) and images:
        if all(isinstance(sample, (list, tuple)) for sample in images):
            for index, sample in enumerate(images):
                for item in sample:
                    if not is_image(item):
                        raise ValueError(f"sample {index}: unsupported image {type(item).__name__}")
            return [list(sample) for sample in images]
        if all(is_image(item) for item in images):
            return [list(images)]
    raise ValueError(
        "images must be an image (PIL image, uint8 array, path or bytes), a list of images for one sample, or a list "
        f"with one list of images per sample; got {type(images).__name__}"
    )


@dataclasses.dataclass(frozen=True)
class ImageProcessor:
    """Mllama's tiled image preprocessing; the defaults are Llama-3.2-11B-Vision's `preprocessor_config.json`.

    Attributes:
      tile_size: side of a square tile in pixels (560 for the released models, e.g. 28 or 56 for tiny test models).
      max_image_tiles: most tiles per image (4); also the length of the tile axis of the outputs.
      image_mean, image_std: per-channel normalisation after rescaling.
      resample: PIL resampling filter used to resize (2 = bilinear).
      rescale_factor: multiplies the uint8 values before normalising (1/255).
      do_rescale, do_normalize: switch the two value transforms off, as transformers allows.
    """

    tile_size: int = 560
    max_image_tiles: int = 4
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD
    resample: int = int(PIL.Image.Resampling.BILINEAR)
    rescale_factor: float = 1 / 255
    do_rescale: bool = True
    do_normalize: bool = True

    def __post_init__(self):
        for name in ("tile_size", "max_image_tiles", "resample"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if self.tile_size < 1 or self.max_image_tiles < 1:
            raise ValueError(f"tile_size and max_image_tiles must be positive, got {self.tile_size}, "
                             f"{self.max_image_tiles}")
        if self.resample not in {int(mode) for mode in PIL.Image.Resampling}:
            raise ValueError(f"resample must be a PIL resampling filter (0-5), got {self.resample}")
        for name in ("image_mean", "image_std"):
            value = getattr(self, name)
            values = (value,) * 3 if isinstance(value, (int, float)) else tuple(value)
            if len(values) != 3 or not all(isinstance(v, (int, float)) for v in values):
                raise ValueError(f"{name} must be a number or 3 numbers (one per RGB channel), got {value!r}")
            object.__setattr__(self, name, tuple(float(v) for v in values))
        if 0.0 in self.image_std:
            raise ValueError(f"image_std must not contain 0, got {self.image_std}")
        if isinstance(self.rescale_factor, bool) or not isinstance(self.rescale_factor, (int, float)):
            raise ValueError(f"rescale_factor must be a number, got {self.rescale_factor!r}")
        if not isinstance(self.do_rescale, bool) or not isinstance(self.do_normalize, bool):
            raise ValueError(f"do_rescale and do_normalize must be booleans, got {self.do_rescale!r}, "
                             f"{self.do_normalize!r}")

    # ----------------------------------------------------------------------------------------------------- configs
    @classmethod
    def from_config(cls, config: dict, source: str = "config") -> "ImageProcessor":
        """From a transformers `preprocessor_config.json` dictionary (`size`, `max_image_tiles`, mean/std, ...).

        `size`, `image_mean` and `image_std` must be present: transformers would fill them with class defaults (224 px,
        mean/std 0.5) that no Mllama checkpoint uses, so a config without them is refused rather than guessed.
        """
        missing = [key for key in ("size", "image_mean", "image_std") if key not in config]
        if missing:
            raise ValueError(f"{source}: missing {', '.join(missing)}")
        refused = [key for key in _REQUIRED_TRUE if not config.get(key, True)]
        if refused:
            raise ValueError(f"{source}: {', '.join(refused)} = false is not supported by Mllama preprocessing")
        size = config["size"]
        if not isinstance(size, dict) or size.get("height") is None or size.get("height") != size.get("width"):
            raise ValueError(f"{source}: 'size' must be {{'height': n, 'width': n}} with equal sides, got {size!r}")
        fields = {
            "tile_size": size["height"],
            **{key: config[key] for key in ("max_image_tiles", "image_mean", "image_std", "resample",
                                            "rescale_factor", "do_rescale", "do_normalize") if key in config},
        }
        try:
            return cls(**fields)
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "ImageProcessor":
        """Reads `preprocessor_config.json` from a transformers-format directory."""
        path = Path(directory) / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (is '{directory}' a processor directory?)")
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from None
        return cls.from_config(config, source=str(path))

    def to_config(self) -> dict:
        """The transformers `preprocessor_config.json` dictionary (loadable by `MllamaImageProcessor`)."""
        return {
            "do_convert_rgb": True,
            "do_normalize": self.do_normalize,
            "do_pad": True,
            "do_rescale": self.do_rescale,
            "do_resize": True,
            "image_mean": list(self.image_mean),
            "image_processor_type": "MllamaImageProcessor",
            "image_std": list(self.image_std),
            "max_image_tiles": self.max_image_tiles,
            "processor_class": "MllamaProcessor",
            "resample": self.resample,
            "rescale_factor": self.rescale_factor,
            "size": {"height": self.tile_size, "width": self.tile_size},
        }

    def save_pretrained(self, directory: str | Path) -> Path:
        """Writes `preprocessor_config.json` into `directory` (created if needed); returns its path."""
        path = Path(directory) / CONFIG_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_config(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return path

    # ------------------------------------------------------------------------------------------------ one image
    @functools.cached_property
    def _value_table(self) -> np.ndarray:
        """`[3, 256]` float32: the preprocessed value of each uint8 level per channel, computed as transformers does."""
        levels = np.arange(256, dtype=np.uint8)
        values = levels.astype(np.float64) * self.rescale_factor if self.do_rescale else levels
        values = np.broadcast_to(values.astype(np.float32), (3, 256))
        if self.do_normalize:
            mean = np.asarray(self.image_mean, dtype=np.float32)[:, None]
            std = np.asarray(self.image_std, dtype=np.float32)[:, None]
            values = (values - mean) / std
        return np.ascontiguousarray(values, dtype=np.float32)

    def _fitted(self, image: ImageLike) -> tuple[np.ndarray, tuple[int, int]]:
        """The RGB image resized for its grid, as a uint8 `[h, w, 3]` array, and the grid."""
        rgb = to_rgb(load_image(image))
        grid = tiling.best_grid(rgb.height, rgb.width, self.tile_size, self.max_image_tiles)
        height, width = tiling.resized_size(rgb.height, rgb.width, grid, self.tile_size)
        if (width, height) != rgb.size:  # PIL returns an identical copy for an unchanged size
            rgb = rgb.resize((width, height), resample=self.resample)
        return np.asarray(rgb), grid

    def _write_tiles(self, pixels: np.ndarray, grid: tuple[int, int], out: np.ndarray) -> None:
        """Pads `pixels` to the canvas and writes its normalised tiles into `out[:grid_h * grid_w]` (row-major)."""
        tile, (high, wide) = self.tile_size, grid
        canvas = np.zeros((high * tile, wide * tile, 3), dtype=np.uint8)
        canvas[: pixels.shape[0], : pixels.shape[1]] = pixels
        # One lookup per tile and channel: `np.take` is fastest writing whole contiguous planes, and mode="clip" skips
        # the bounds check (uint8 levels always index the 256-entry table).
        for row in range(high):
            for column in range(wide):
                block = canvas[row * tile : (row + 1) * tile, column * tile : (column + 1) * tile]
                for channel in range(3):
                    np.take(self._value_table[channel], block[..., channel], out=out[row * wide + column, channel],
                            mode="clip")

    def preprocess(self, image: ImageLike) -> TiledImage:
        """Preprocesses one image (PIL image, uint8 array, path or encoded bytes) into its tiles and grid.

        This is the unit a data loader can run in its workers; `pack` batches the results.
        """
        pixels, grid = self._fitted(image)
        tiles = np.empty((grid[0] * grid[1], 3, self.tile_size, self.tile_size), dtype=np.float32)
        self._write_tiles(pixels, grid, tiles)
        return TiledImage(tiles, grid)

    # ---------------------------------------------------------------------------------------------------- batches
    def _batch_arrays(self, grids: Sequence[Sequence[tuple[int, int]]], max_images: int) -> dict:
        """`aspect_ratio_ids`, `aspect_ratio_mask` and `num_tiles` for the grids of a batch."""
        ids = np.zeros((len(grids), max_images), dtype=np.int64)
        mask = np.zeros((len(grids), max_images, self.max_image_tiles), dtype=np.int64)
        mask[:, :, 0] = 1
        for row, sample in enumerate(grids):
            for column, grid in enumerate(sample):
                ids[row, column] = tiling.aspect_ratio_id(grid, self.max_image_tiles)
                mask[row, column, : grid[0] * grid[1]] = 1
        num_tiles = [[high * wide for high, wide in sample] for sample in grids]
        return {"aspect_ratio_ids": ids, "aspect_ratio_mask": mask, "num_tiles": num_tiles}

    def _empty_batch(self, num_samples: int, max_images: int) -> np.ndarray:
        """Zero `pixel_values` for a batch; padding tiles and images stay exactly 0."""
        tile = self.tile_size
        return np.zeros((num_samples, max_images, self.max_image_tiles, 3, tile, tile), dtype=np.float32)

    def _max_images(self, counts: list[int], max_images: int | None) -> int:
        """Length of the image axis for samples with `counts` images: `max_images`, or the largest count."""
        if not any(counts):
            raise ValueError("no images given")
        if max_images is None:
            return max(counts)
        if max(counts) > max_images:
            raise ValueError(f"a sample has {max(counts)} images but max_images is {max_images}")
        return max_images

    def pack(self, samples: Sequence[Sequence[TiledImage]], max_images: int | None = None) -> dict:
        """Batches preprocessed images (one list per sample) like transformers' processor output.

        Args:
          samples: `preprocess` results, one list per sample.
          max_images: pad the image axis to this many images (fixed shapes); default: the most images in a sample.

        Returns:
          dict with `pixel_values`, `aspect_ratio_ids`, `aspect_ratio_mask` (numpy) and `num_tiles` (list of lists).
        """
        max_images = self._max_images([len(sample) for sample in samples], max_images)
        pixel_values = self._empty_batch(len(samples), max_images)
        for row, sample in enumerate(samples):
            for column, image in enumerate(sample):
                if image.tiles.shape[1:] != pixel_values.shape[3:] or image.num_tiles != image.grid[0] * image.grid[1]:
                    raise ValueError(f"sample {row}, image {column}: tiles {image.tiles.shape} do not fit this "
                                     "processor")
                pixel_values[row, column, : image.num_tiles] = image.tiles
        grids = [[image.grid for image in sample] for sample in samples]
        return {"pixel_values": pixel_values, **self._batch_arrays(grids, max_images)}

    def __call__(self, images, max_images: int | None = None, num_workers: int = 0) -> dict:
        """Preprocesses and batches images, like transformers' `MllamaImageProcessor(images)`.

        Args:
          images: an image, a list of images (one sample) or a list of lists of images (one per sample); see
            `nest_images`. Images are PIL images, uint8 arrays, file paths or encoded bytes.
          max_images: pad the image axis to this many images; default: the most images in a sample.
          num_workers: threads to spread the images over (0 or 1: in this thread).

        Returns:
          dict with `pixel_values` float32 `[B, max_images, max_image_tiles, 3, tile, tile]`, `aspect_ratio_ids`
          int64 `[B, max_images]`, `aspect_ratio_mask` int64 `[B, max_images, max_image_tiles]` and `num_tiles`
          (list of lists).

        Raises:
          ValueError / FileNotFoundError naming the sample and image that cannot be read.
        """
        samples = nest_images(images)
        max_images = self._max_images([len(sample) for sample in samples], max_images)
        pixel_values = self._empty_batch(len(samples), max_images)
        slots = [(row, column) for row, sample in enumerate(samples) for column in range(len(sample))]

        def fill(slot):
            row, column = slot
            try:
                pixels, grid = self._fitted(samples[row][column])
            except FileNotFoundError as error:
                raise FileNotFoundError(f"sample {row}, image {column}: {error}") from None
            except ValueError as error:
                raise ValueError(f"sample {row}, image {column}: {error}") from None
            self._write_tiles(pixels, grid, pixel_values[row, column])
            return grid

        if num_workers > 1 and len(slots) > 1:
            with ThreadPoolExecutor(max_workers=num_workers) as pool:
                found = list(pool.map(fill, slots))
        else:
            found = [fill(slot) for slot in slots]
        grids = [[] for _ in samples]
        for (row, _), grid in zip(slots, found):
            grids[row].append(grid)
        return {"pixel_values": pixel_values, **self._batch_arrays(grids, max_images)}
