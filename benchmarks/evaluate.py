"""Greedy evaluation throughput: the runner (`llavao1_jax.evaluate.runner.run`: base64 decoding, prompts, the
processor, `lj.search` greedy, scoring, predictions.jsonl, tables) against bare `Generator.generate` on the same
prompts already preprocessed, at the same batch, same process.

The mid-size config with random weights (benchmarks/generate.py's), float32, the real Llama-3.2-Vision processor with
224-px tiles, an MMStar-layout TSV of --rows questions with one 448-px image each (four tiles). The random model
rarely stops early, so both sides generate the same tokens (printed, the runner's from its predictions'
`generated_tokens`; they must match). Each side runs once to
compile, then the two take turns --repeats times, each timed over all rows (the best pass counts).

    python benchmarks/evaluate.py [--rows 16] [--batch 8] [--stage-tokens 16] [--repeats 2]
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import PIL.Image

import llavao1_jax as lj
from generate import random_model
from llavao1_jax import evaluate as ev
from llavao1_jax.evaluate.runner import run
from llavao1_jax.model import preset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "configs"))
from eval import get_config  # noqa: E402  configs/eval.py


def write_benchmark(path: Path, rows: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    header = ["index", "question", "answer", "category", "A", "B", "C", "D", "image"]
    lines = ["\t".join(header)]
    for i in range(rows):
        buffer = io.BytesIO()
        PIL.Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, format="PNG")
        image = base64.b64encode(buffer.getvalue()).decode()
        lines.append("\t".join([str(i), f"Which shape is number {i}?", "A", "math", "circle", "square", "triangle",
                                "star", image]))
    path.write_text("\n".join(lines) + "\n")
    return path


def bare_inputs(processor, bench, batch: int) -> list[dict]:
    """The model inputs of every batch of rows, built beforehand (images decoded, prompts rendered)."""
    inputs = []
    for start in range(0, len(bench), batch):
        rows = bench.rows[start:start + batch]
        inputs.append(processor(images=[[row.image()] for row in rows],
                                text=[ev.chat_prompt(processor, row, bench.kind) for row in rows],
                                padding=True, padding_side="left"))
    return inputs


def bare_pass(generator, processor, inputs, budget: int) -> tuple[float, int]:
    """Seconds of `generate` alone over all batches, and the tokens generated."""
    start, tokens = time.perf_counter(), 0
    for batch_inputs in inputs:
        tokens += int(generator.generate(batch_inputs, max_new_tokens=budget, processor=processor).lengths.sum())
    return time.perf_counter() - start, tokens


def runner_pass(config, workdir: Path, generator, processor, search_config) -> float:
    """Seconds of a whole runner pass over `config`'s rows into a fresh `workdir`."""
    start = time.perf_counter()
    run(config, workdir, generator, processor, search_config)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--stage-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2, help="timed passes per side; the best counts")
    args = parser.parse_args()
    config = preset("mid", scan_layers=False)
    generator = lj.Generator(random_model(config))
    processor = lj.Processor.llama3_2_vision(tile_size=config.vision.image_size,
                                             max_image_tiles=config.vision.max_num_tiles)
    budget = 4 * args.stage_tokens
    with tempfile.TemporaryDirectory() as tmp:
        path = write_benchmark(Path(tmp) / "MMStar.tsv", args.rows, 2 * config.vision.image_size)
        inputs = bare_inputs(processor, ev.read_benchmark(path), args.batch)
        eval_config = get_config()
        eval_config.benchmark, eval_config.batch_size = str(path), args.batch
        eval_config.search.max_stage_tokens = args.stage_tokens
        search_config = lj.SearchConfig.from_dict(eval_config.search.to_dict())
        warm = eval_config.copy_and_resolve_references()
        warm.limit = args.batch
        generator.generate(inputs[0], max_new_tokens=budget, processor=processor)  # compile
        run(warm, Path(tmp) / "warm", generator, processor, search_config)
        # The two sides take turns, so that a change in the machine's load falls on both; the best pass counts.
        passes = []
        for repeat in range(args.repeats):
            seconds, bare_tokens = bare_pass(generator, processor, inputs, budget)
            passes.append((seconds, runner_pass(eval_config, Path(tmp) / f"timed{repeat}", generator, processor,
                                                search_config)))
        bare_s, run_s = (min(side) for side in zip(*passes))
        lines = (Path(tmp) / "timed0" / "predictions.jsonl").read_text().splitlines()
        run_tokens = round(sum(json.loads(line)["generated_tokens"] for line in lines))
    print(f"\n{args.rows} rows, batch {args.batch}, greedy, {4 * args.stage_tokens} new tokens per row at most; "
          f"mid config on {jax.devices()[0].platform}")
    print("| side | seconds | rows/s | tokens |\n|---|---|---|---|")
    print(f"| bare generate | {bare_s:.2f} | {args.rows / bare_s:.2f} | {bare_tokens} |")
    print(f"| evaluation runner | {run_s:.2f} | {args.rows / run_s:.2f} | {run_tokens} |")
    print(f"runner overhead: {100 * (run_s / bare_s - 1):+.1f}% (passes, bare / runner s: "
          f"{', '.join(f'{b:.2f} / {r:.2f}' for b, r in passes)})")


if __name__ == "__main__":
    main()
