"""Image preprocessing: bit-identical to transformers 4.54.1 `MllamaImageProcessor`, plus input checks and batching."""
import io
import json
import random

import numpy as np
import PIL.Image
import pytest
from transformers.models.mllama import image_processing_mllama as hf_mllama

from llavao1_jax.processor import tiling
from llavao1_jax.processor.image_io import load_image
from llavao1_jax.processor.image_processing import ImageProcessor, nest_images


def photo(height: int, width: int, seed: int = 0, channels: int = 3) -> np.ndarray:
    """A photo-like uint8 image: smooth colour fields plus grain, so resizing really interpolates."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (max(height // 40, 2), max(width // 40, 2), channels), dtype=np.uint8)
    smooth = np.asarray(PIL.Image.fromarray(coarse.squeeze(-1) if channels == 1 else coarse).resize((width, height)))
    grain = rng.integers(-20, 21, smooth.shape)
    return np.clip(smooth.astype(np.int64) + grain, 0, 255).astype(np.uint8)


def as_mode(array: np.ndarray, mode: str) -> PIL.Image.Image:
    """The image `array` (H, W, 3) in a PIL mode, with real transparency for the modes that have it."""
    rgb = PIL.Image.fromarray(array)
    if mode in ("RGBA", "LA"):
        alpha = PIL.Image.fromarray(np.linspace(0, 255, array.shape[1], dtype=np.uint8)[None].repeat(array.shape[0], 0))
        image = rgb.convert(mode[:-1])
        image.putalpha(alpha)
        return image
    if mode == "P":
        image = rgb.quantize(colors=32)
        image.info["transparency"] = 3
        return image
    if mode == "I;16":
        return PIL.Image.fromarray((array[..., 0].astype(np.uint16) * 257 // 300).astype(np.uint16))
    return rgb.convert(mode)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Ours and transformers' processors for the released configuration (transformers loads the config we save)."""
    ours = ImageProcessor()
    directory = tmp_path_factory.mktemp("preprocessor")
    ours.save_pretrained(directory)
    return ours, hf_mllama.MllamaImageProcessor.from_pretrained(directory)


def transformers_batch(processor, images):
    out = processor(images)
    return {key: np.asarray(value) if key != "num_tiles" else value for key, value in out.items()}


def assert_same_batch(ours: dict, theirs: dict):
    assert ours.keys() == theirs.keys()
    for key in ours:
        if key == "num_tiles":
            assert ours[key] == theirs[key]
        else:
            assert ours[key].dtype == theirs[key].dtype, key
            np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)


# (height, width) -> grid, resized (height, width), aspect ratio id, mask; checked with transformers (reference §3.1).
KNOWN = [
    ((300, 200), (1, 1), (560, 373), 1, [1, 0, 0, 0]),
    ((560, 560), (1, 1), (560, 560), 1, [1, 0, 0, 0]),
    ((800, 600), (2, 2), (800, 600), 6, [1, 1, 1, 1]),
    ((1000, 1000), (2, 2), (1000, 1000), 6, [1, 1, 1, 1]),
    ((400, 1600), (1, 3), (400, 1600), 3, [1, 1, 1, 0]),
    ((2000, 300), (4, 1), (2000, 300), 8, [1, 1, 1, 1]),
    ((1500, 700), (3, 1), (1200, 560), 7, [1, 1, 1, 0]),
    ((100, 3000), (1, 4), (74, 2240), 4, [1, 1, 1, 1]),
]


@pytest.mark.parametrize("size, grid, resized, ratio_id, mask", KNOWN)
def test_known_geometry(size, grid, resized, ratio_id, mask):
    assert tiling.best_grid(*size, 560, 4) == grid
    assert tiling.resized_size(*size, grid, 560) == resized
    assert tiling.aspect_ratio_id(grid, 4) == ratio_id
    out = ImageProcessor(tile_size=56)._batch_arrays([[grid]], 1)
    assert out["aspect_ratio_mask"].tolist() == [[mask]]


def test_geometry_matches_transformers_everywhere():
    rng = random.Random(0)
    sizes = [(rng.randint(1, 5000), rng.randint(1, 5000)) for _ in range(1500)]
    sizes += [(h, w) for h in (1, 2, 27, 28, 29, 55, 56, 57, 560, 1120) for w in (1, 3, 28, 56, 111, 560, 1680, 2240)]
    for tile, max_tiles in ((560, 4), (28, 4), (56, 6), (7, 1), (30, 9)):
        assert list(tiling.supported_grids(max_tiles)) == hf_mllama.get_all_supported_aspect_ratios(max_tiles)
        for height, width in sizes:
            canvas = hf_mllama.get_optimal_tiled_canvas(height, width, max_tiles, tile)
            grid = tiling.best_grid(height, width, tile, max_tiles)
            assert (grid[0] * tile, grid[1] * tile) == tuple(canvas), (height, width, tile, max_tiles)
            expected = hf_mllama.get_image_size_fit_to_canvas(height, width, *canvas, tile)
            assert tiling.resized_size(height, width, grid, tile) == tuple(expected), (height, width, tile)


SIZES_560 = [(1, 1), (3, 5), (560, 560), (1120, 560), (559, 561), (300, 200), (800, 600), (1680, 1120),
             (400, 1600), (2000, 300), (1500, 700), (100, 3000), (1, 2000), (2500, 7), (3000, 4000)]


@pytest.mark.parametrize("size", SIZES_560, ids=str)
def test_pixels_match_transformers(reference, size):
    ours, theirs = reference
    image = PIL.Image.fromarray(photo(*size, seed=size[0] * 7 + size[1]))
    assert_same_batch(ours(image), transformers_batch(theirs, image))


@pytest.mark.parametrize("mode", ["RGBA", "L", "LA", "P", "I;16", "1", "CMYK", "I", "F"])
def test_modes_match_transformers(reference, mode):
    ours, theirs = reference
    image = as_mode(photo(450, 700, seed=3), mode)
    assert image.mode == mode
    assert_same_batch(ours(image), transformers_batch(theirs, image))


def test_array_input_matches_transformers(reference):
    ours, theirs = reference
    array = photo(611, 333, seed=5)
    assert_same_batch(ours(array), transformers_batch(theirs, array))


@pytest.mark.parametrize("tile, max_tiles", [(28, 4), (56, 6), (33, 2)])
def test_small_tiles_and_batches_match_transformers(tmp_path, tile, max_tiles):
    ours = ImageProcessor(tile_size=tile, max_image_tiles=max_tiles, image_mean=(0.5, 0.4, 0.3), image_std=0.25)
    ours.save_pretrained(tmp_path)
    theirs = hf_mllama.MllamaImageProcessor.from_pretrained(tmp_path)
    rng = random.Random(tile)
    batch = [[PIL.Image.fromarray(photo(rng.randint(1, 300), rng.randint(1, 300), seed=10 * row + column))
              for column in range(rng.randint(1, 3))] for row in range(4)]
    batch[1][0] = batch[1][0].convert("RGBA")
    assert_same_batch(ours(batch), transformers_batch(theirs, batch))


def test_batch_layout_and_padding(reference):
    ours, theirs = reference
    images = [[PIL.Image.fromarray(photo(300, 200)), PIL.Image.fromarray(photo(800, 600, seed=1))],
              [PIL.Image.fromarray(photo(400, 1600, seed=2))]]
    out = ours(images)
    assert_same_batch(out, transformers_batch(theirs, images))
    assert out["pixel_values"].shape == (2, 2, 4, 3, 560, 560)
    assert out["aspect_ratio_ids"].tolist() == [[1, 6], [3, 0]]
    assert out["aspect_ratio_mask"].tolist() == [[[1, 0, 0, 0], [1, 1, 1, 1]], [[1, 1, 1, 0], [1, 0, 0, 0]]]
    assert out["num_tiles"] == [[1, 4], [3]]
    assert not out["pixel_values"][0, 0, 1:].any() and not out["pixel_values"][1, 1].any()
    # Padding pixels are zero before normalisation: (0 - mean) / std.
    assert out["pixel_values"][0, 0, 0, 0, 0, -1] == np.float32((np.float32(0) - np.float32(0.48145466))
                                                                 / np.float32(0.26862954))


def test_preprocess_pack_and_threads_agree():
    processor = ImageProcessor(tile_size=56)
    images = [[photo(90, 200, seed=1), photo(30, 30, seed=2)], [photo(150, 60, seed=3)]]
    direct = processor(images, max_images=3)
    threaded = processor(images, max_images=3, num_workers=2)
    packed = processor.pack([[processor.preprocess(image) for image in sample] for sample in images], max_images=3)
    assert direct["pixel_values"].shape == (2, 3, 4, 3, 56, 56)
    for other in (threaded, packed):
        assert_same_batch(direct, other)
    single = processor.preprocess(images[0][0])
    assert single.grid == (1, 3) and single.num_tiles == 3 and single.tiles.dtype == np.float32


def test_nesting_follows_transformers():
    a, b = photo(10, 10), photo(20, 20)
    assert [len(s) for s in nest_images(a)] == [1]
    assert [len(s) for s in nest_images([a, b])] == [2]  # a flat list is one sample
    assert [len(s) for s in nest_images([[a], [b, a]])] == [1, 2]
    assert [len(s) for s in nest_images(np.stack([a, a, a]))] == [3]
    with pytest.raises(ValueError, match="list with one list of images per sample"):
        nest_images([])
    with pytest.raises(ValueError, match="sample 1: unsupported image int"):
        nest_images([[a], [3]])


def test_config_round_trip(tmp_path):
    processor = ImageProcessor(tile_size=28, max_image_tiles=6, image_mean=0.5, image_std=(0.1, 0.2, 0.3))
    processor.save_pretrained(tmp_path)
    assert ImageProcessor.from_pretrained(tmp_path) == processor
    config = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert config["size"] == {"height": 28, "width": 28} and config["image_mean"] == [0.5, 0.5, 0.5]
    assert config["resample"] == 2 and config["image_processor_type"] == "MllamaImageProcessor"


@pytest.mark.parametrize("config, message", [
    ({"do_pad": False}, "do_pad = false is not supported"),
    ({"size": {"height": 28, "width": 56}}, "equal sides"),
    ({"size": {"height": 0, "width": 0}}, "must be positive"),
    ({"image_mean": [0.5, 0.5]}, "image_mean must be a number or 3 numbers"),
    ({"image_std": [0.5, 0.0, 0.5]}, "must not contain 0"),
    ({"max_image_tiles": 2.5}, "max_image_tiles must be an integer"),
    ({"resample": 9}, "resample must be a PIL resampling filter"),
    ({"rescale_factor": "1/255"}, "rescale_factor must be a number"),
    ({"do_normalize": "yes"}, "do_rescale and do_normalize must be booleans"),
])
def test_bad_configs(tmp_path, config, message):
    complete = ImageProcessor(tile_size=28).to_config()
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({**complete, **config}))
    with pytest.raises(ValueError, match=message) as error:
        ImageProcessor.from_pretrained(tmp_path)
    assert "preprocessor_config.json" in str(error.value)


def test_missing_and_broken_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json not found"):
        ImageProcessor.from_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        ImageProcessor.from_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"max_image_tiles": 4, "image_std": [0.5] * 3}))
    with pytest.raises(ValueError, match="preprocessor_config.json: missing size, image_mean"):
        ImageProcessor.from_pretrained(tmp_path)


def test_bad_images(tmp_path):
    processor = ImageProcessor(tile_size=28)
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not an image")
    buffer = io.BytesIO()
    PIL.Image.fromarray(photo(64, 64)).save(buffer, format="PNG")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    cases = [
        (FileNotFoundError, tmp_path / "missing.jpg", "missing.jpg' does not exist"),
        (ValueError, str(text_file), "notes.txt' is not an image PIL can read"),
        (ValueError, truncated, "truncated.png' could not be decoded"),
        (ValueError, b"\x89PNG garbage", r"encoded image \(12 bytes\) is not an image"),
        (ValueError, PIL.Image.new("RGB", (0, 5)), "zero-sized side"),
        (ValueError, np.zeros((0, 4, 3), np.uint8), "zero-sized side"),
        (ValueError, np.zeros((4, 4, 3), np.float32), "arrays must be uint8"),
        (ValueError, np.zeros((4, 4, 2), np.uint8), "arrays must be uint8"),
    ]
    for error_type, image, message in cases:
        with pytest.raises(error_type, match=message):
            load_image(image)
        with pytest.raises(error_type, match="sample 1, image 0: .*" + message):
            processor([[photo(8, 8)], [image]])
    with pytest.raises(ValueError, match="unsupported image"):
        load_image(42)


def test_files_and_bytes_load_upright(tmp_path):
    array = photo(40, 90)
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to view
    path = tmp_path / "phone.jpg"
    PIL.Image.fromarray(array).save(path, exif=exif, quality=95)
    assert load_image(path).size == (40, 90)
    assert load_image(path.read_bytes()).size == (40, 90)
    processor = ImageProcessor(tile_size=28)
    np.testing.assert_array_equal(processor(str(path))["pixel_values"], processor(load_image(path))["pixel_values"])
