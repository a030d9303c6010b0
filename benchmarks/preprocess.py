"""Image preprocessing throughput: ours (serial and threaded) against transformers' MllamaImageProcessor, same run.

A batch of photo-sized images of mixed sizes (decoded PIL RGB images, one image per sample) goes through the released
configuration (560 px tiles, at most 4). Both produce `pixel_values [B, 1, 4, 3, 560, 560]`; the outputs are checked
to be identical before timing. Prints images/second and the ratio to transformers.

    python benchmarks/preprocess.py                      # 32 images, best of 3 runs, ours with 1 and 2 threads
    python benchmarks/preprocess.py --images 64 --workers 1,2,4 --repeats 5
"""
import argparse
import statistics
import tempfile
import time

import numpy as np
import PIL.Image
from transformers import MllamaImageProcessor

from llavao1_jax.processor.image_processing import ImageProcessor

# (height, width) of common camera and screen formats, landscape and portrait.
PHOTO_SIZES = [(768, 1024), (1024, 768), (720, 1280), (480, 640), (1200, 1600), (800, 800), (1080, 1920), (600, 900)]


def photos(count: int, seed: int = 0) -> list[PIL.Image.Image]:
    """Photo-like RGB images (smooth colour fields plus grain) cycling through PHOTO_SIZES."""
    rng = np.random.default_rng(seed)
    images = []
    for index in range(count):
        height, width = PHOTO_SIZES[index % len(PHOTO_SIZES)]
        coarse = PIL.Image.fromarray(rng.integers(0, 256, (height // 64, width // 64, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((width, height), PIL.Image.Resampling.BICUBIC), dtype=np.int16)
        grain = rng.integers(-12, 13, smooth.shape, dtype=np.int16)
        images.append(PIL.Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8)))
    return images


def timed(function, repeats: int) -> list[float]:
    """Wall-clock seconds of `repeats` calls (the results are dropped at once to keep memory flat)."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - start)
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=32, help="images in the batch")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per implementation (best is reported)")
    parser.add_argument("--workers", default="1,2", help="comma-separated thread counts for ours")
    args = parser.parse_args()

    ours = ImageProcessor()
    with tempfile.TemporaryDirectory() as directory:
        ours.save_pretrained(directory)
        theirs = MllamaImageProcessor.from_pretrained(directory)
    batch = [[image] for image in photos(args.images)]

    check_ours, check_theirs = ours(batch), theirs(batch)
    identical = all(np.array_equal(check_ours[key], np.asarray(check_theirs[key]))
                    for key in ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask"))
    del check_ours, check_theirs

    rows = [("transformers 4.54.1 MllamaImageProcessor", timed(lambda: theirs(batch), args.repeats))]
    for workers in (int(w) for w in args.workers.split(",")):
        label = f"llavao1_jax ImageProcessor, {workers} thread{'s' if workers > 1 else ''}"
        rows.append((label, timed(lambda: ours(batch, num_workers=workers), args.repeats)))

    reference = min(rows[0][1])
    sizes = ", ".join(f"{width}x{height}" for height, width in PHOTO_SIZES)
    print(f"{args.images} images cycling through {sizes} (WxH); 560 px tiles, max 4; best of {args.repeats} runs; "
          f"outputs identical: {identical}")
    print(f"{'implementation':<46}{'images/s':>10}{'ms/image':>10}{'median s':>10}{'vs transformers':>17}")
    for label, seconds in rows:
        best = min(seconds)
        print(f"{label:<46}{args.images / best:>10.1f}{1000 * best / args.images:>10.1f}"
              f"{statistics.median(seconds):>10.2f}{reference / best:>16.2f}x")


if __name__ == "__main__":
    main()
