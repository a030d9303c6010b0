"""Image preprocessing throughput: ours (serial and threaded) against transformers' MllamaImageProcessor, same run.

A batch of photo-sized images of mixed sizes (decoded PIL RGB images, one image per sample) goes through the released
configuration (560 px tiles, at most 4). Both produce `pixel_values [B, 1, 4, 3, 560, 560]`; the outputs are checked
to be identical before timing. Prints, per implementation, images/second (best wall time), process CPU time per image
(median; threads add up) and both ratios to transformers. On a busy machine trust the CPU column for one thread.

    python benchmarks/preprocess.py                      # 32 images, 3 rounds, ours with 1 and 2 threads
    python benchmarks/preprocess.py --images 64 --workers 1,2,4 --repeats 5
"""
import argparse
import functools
import os
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


def measure(runs: dict, repeats: int) -> dict:
    """Wall and process-CPU seconds of each function over `repeats` rounds, interleaved round by round so that every
    implementation meets the same background load (results are dropped at once to keep memory flat)."""
    times = {label: {"wall": [], "cpu": []} for label in runs}
    for _ in range(repeats):
        for label, function in runs.items():
            wall, cpu = time.perf_counter(), time.process_time()
            function()
            times[label]["wall"].append(time.perf_counter() - wall)
            times[label]["cpu"].append(time.process_time() - cpu)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=32, help="images in the batch")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timed rounds per implementation")
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

    runs = {"transformers 4.54.1 MllamaImageProcessor": lambda: theirs(batch)}
    for workers in (int(w) for w in args.workers.split(",")):
        label = f"llavao1_jax ImageProcessor, {workers} thread{'s' if workers > 1 else ''}"
        runs[label] = functools.partial(ours, batch, num_workers=workers)
    times = measure(runs, args.repeats)

    sizes = ", ".join(f"{width}x{height}" for height, width in PHOTO_SIZES)
    print(f"{args.images} images cycling through {sizes} (WxH); 560 px tiles, max 4; {args.repeats} interleaved "
          f"rounds; outputs identical: {identical}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    reference = times[next(iter(runs))]
    print(f"{'implementation':<44}{'images/s':>9}{'ms/image':>9}{'CPU ms/image':>13}{'speed-up':>9}{'CPU ratio':>10}")
    for label, seconds in times.items():
        wall, cpu = min(seconds["wall"]), statistics.median(seconds["cpu"])
        print(f"{label:<44}{args.images / wall:>9.1f}{1000 * wall / args.images:>9.1f}{1000 * cpu / args.images:>13.1f}"
              f"{min(reference['wall']) / wall:>8.2f}x{statistics.median(reference['cpu']) / cpu:>9.2f}x")


if __name__ == "__main__":
    main()
