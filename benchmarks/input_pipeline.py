"""SFT input pipeline throughput (decode, preprocess 4-tile images, tokenise, batch) against the tiny model's train step.

Builds the synthetic dataset into a temp dir, then for each setting measures samples/second of the full pipeline
(`llavao1_jax.data.pipeline`) with 0 (in the main process), 1 and 2 worker processes, after a warm-up batch (worker
start-up is reported separately). Every image gives 4 tiles (a 2 x 2 grid):

  tiny:     112 px images, 28 px tiles (the 'tiny' preset's tile; images shrink to 56 px)
  tile56:   112 px images, 56 px tiles (no resize)
  released: 1000 px images, 560 px tiles (the released model's preprocessing, 15 MB of pixels per sample)

Then a jitted forward + backward (cross-entropy on the labels) of the 'tiny' model at the same batch size, alone and fed
by the pipeline (2 workers), so "input-bound" can be read off directly: the fed figure is the alone figure when the
pipeline keeps up.

    python benchmarks/input_pipeline.py                        # batch 8, all settings
    python benchmarks/input_pipeline.py --settings tiny --batches 40 --workers 0,2
"""
import argparse
import os
import tempfile
import time

import numpy as np

SETTINGS = {"tiny": (112, 28), "tile56": (112, 56), "released": (1000, 560)}  # name: (image size, tile size)
BUCKETS = (256, 512)


def pipeline_rate(data_dir, processor, batch_size: int, batches: int, workers: int) -> tuple[float, float]:
    """(start-up seconds to the first batch, samples/second over `batches` batches after a warm-up)."""
    from llavao1_jax.data import pipeline

    source = pipeline.host_source("synthetic_reasoning", "train", data_dir, process_index=0, process_count=1)
    iterator = pipeline.SFTIterator(pipeline.sft_dataset(source, processor, batch_size=batch_size, buckets=BUCKETS,
                                                         num_workers=workers))
    start = time.perf_counter()
    next(iterator)
    startup = time.perf_counter() - start
    for _ in range(2 * workers):  # let every worker start and fill its buffer before timing
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(iterator)
    rate = batches * batch_size / (time.perf_counter() - start)
    assert batch["pixel_values"].shape[2] == 4 and batch["aspect_ratio_mask"].all()  # really 4 tiles per image
    iterator.close()
    return startup, rate


def train_step_rates(data_dir, processor, batch_size: int, steps: int) -> tuple[float, float]:
    """Samples/second of the tiny model's jitted forward + backward: on one fixed batch, and fed by the pipeline."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from llavao1_jax.data import pipeline
    from llavao1_jax.model import init_model, preset

    model = init_model(preset("tiny"), seed=0)
    graphdef, params = nnx.split(model)

    @jax.jit
    def step(params, batch):
        def loss_fn(params):
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            logits = nnx.merge(graphdef, params).forward(**inputs)[:, :-1]
            labels = batch["labels"][:, 1:]
            mask = labels != pipeline.IGNORE_INDEX
            logp = jax.nn.log_softmax(logits)
            nll = -jnp.take_along_axis(logp, jnp.where(mask, labels, 0)[..., None], axis=-1)[..., 0]
            return (nll * mask).sum() / mask.sum()
        return jax.value_and_grad(loss_fn)(params)

    source = pipeline.host_source("synthetic_reasoning", "train", data_dir, process_index=0, process_count=1)
    iterator = pipeline.SFTIterator(pipeline.sft_dataset(source, processor, batch_size=batch_size, buckets=BUCKETS,
                                                         num_workers=2))
    fixed = next(iterator)
    jax.block_until_ready(step(params, fixed))  # compile
    start = time.perf_counter()
    for _ in range(steps):
        jax.block_until_ready(step(params, fixed))
    alone = steps * batch_size / (time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(steps):
        batch = next(iterator)
        assert batch["input_ids"].shape == fixed["input_ids"].shape  # no recompilation in the timed loop
        jax.block_until_ready(step(params, batch))
    fed = steps * batch_size / (time.perf_counter() - start)
    iterator.close()
    return alone, fed


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=25, help="timed batches per pipeline measurement")
    parser.add_argument("--workers", default="0,1,2", help="comma-separated worker process counts")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, from {list(SETTINGS)}")
    parser.add_argument("--train-steps", type=int, default=10, help="timed steps of the tiny model (0: skip)")
    args = parser.parse_args()

    import tensorflow_datasets as tfds

    from llavao1_jax.data import build
    from llavao1_jax.processor import Processor

    tfds.disable_progress_bar()

    workers = [int(w) for w in args.workers.split(",")]
    num_train = args.batch_size * (args.batches + 2 * max(workers) + 1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.settings.split(","):
            image_size, tile = SETTINGS[name]
            data_dir = f"{tmp}/{name}"
            build.build_synthetic_reasoning(data_dir, num_train=num_train, num_test=1, image_size=image_size)
            processor = Processor.llama3_2_vision(tile_size=tile, max_image_tiles=4)
            for w in workers:
                startup, rate = pipeline_rate(data_dir, processor, args.batch_size, args.batches, w)
                rows.append((f"pipeline {name} ({image_size} px, 4 x {tile} px tiles)", w, startup, rate))
                print(f"  {rows[-1][0]}, {w} workers: {rate:.0f} samples/s", flush=True)
        if args.train_steps:
            data_dir = f"{tmp}/tiny"
            if "tiny" not in args.settings.split(","):
                build.build_synthetic_reasoning(data_dir, num_train=num_train, num_test=1, image_size=112)
            processor = Processor.llama3_2_vision(tile_size=28, max_image_tiles=4)
            alone, fed = train_step_rates(data_dir, processor, args.batch_size, args.train_steps)
            rows.append(("tiny model fwd+bwd, fixed batch", "-", None, alone))
            rows.append(("tiny model fwd+bwd, fed by the pipeline", 2, None, fed))

    print(f"\nbatch size {args.batch_size}, sequence bucket {BUCKETS[0]}, "
          f"{os.cpu_count()} CPU cores\n")
    print(f"| {'what':<56} | workers | start-up s | samples/s |")
    print(f"|{'-' * 58}|---------|------------|-----------|")
    for what, w, startup, rate in rows:
        startup_text = f"{startup:.1f}" if startup is not None else "-"
        print(f"| {what:<56} | {w!s:>7} | {startup_text:>10} | {rate:9.1f} |")


if __name__ == "__main__":
    main()
