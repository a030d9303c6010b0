"""Greedy evaluation throughput: the runner (`llavao1_jax.evaluate.runner.run`: base64 decoding, prompts, the
processor, `lj.search` greedy, scoring, predictions.jsonl, tables) against bare `Generator.generate` on the same
prompts already preprocessed, at the same batch, same process.

The mid-size config with random weights (benchmarks/generate.py's), float32, the real Llama-3.2-Vision processor with
224-px tiles, an MMStar-layout TSV of --rows questions with one 448-px image each (four tiles). The random model
rarely stops early, so both sides generate the same tokens (printed; they must match). Each side runs once to
compile, then is timed over all rows --repeats times (the best counts).

    python benchmarks/evaluate.py [--rows 16] [--batch 8] [--stage-tokens 16] [--repeats 2]
"""
from __future__ import annotations

import argparse
import base64
import io
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


def bare(generator, processor, bench, batch: int, budget: int, repeats: int) -> tuple[float, int]:
    """Best seconds of `generate` alone over all rows (inputs built beforehand) and the tokens generated."""
    inputs = []
    for start in range(0, len(bench), batch):
        rows = bench.rows[start:start + batch]
        inputs.append(processor(images=[[row.image()] for row in rows],
                                text=[ev.chat_prompt(processor, row, bench.kind) for row in rows],
                                padding=True, padding_side="left"))
    generator.generate(inputs[0], max_new_tokens=budget, processor=processor)  # compile
    best = float("inf")
    for _ in range(repeats):
        start, tokens = time.perf_counter(), 0
        for batch_inputs in inputs:
            tokens += int(generator.generate(batch_inputs, max_new_tokens=budget, processor=processor).lengths.sum())
        best = min(best, time.perf_counter() - start)
    return best, tokens


def runner(generator, processor, path: Path, batch: int, stage_tokens: int, workdir: Path,
           repeats: int) -> tuple[float, int]:
    """Best seconds of a whole runner pass over all rows, each into a fresh workdir (after a compile pass on one
    batch), and the tokens written."""
    config = get_config()
    config.benchmark, config.batch_size = str(path), batch
    config.search.max_stage_tokens = stage_tokens
    search_config = lj.SearchConfig.from_dict(config.search.to_dict())
    warm = config.copy_and_resolve_references()
    warm.limit = batch
    run(warm, workdir / "warm", generator, processor, search_config)
    seconds = float("inf")
    for repeat in range(repeats):
        start = time.perf_counter()
        run(config, workdir / f"timed{repeat}", generator, processor, search_config)
        seconds = min(seconds, time.perf_counter() - start)
    outputs = ev.read_predictions(workdir / "timed0" / "predictions.jsonl")
    tokens = sum(len(processor.tokenizer.encode(text, add_special_tokens=False)) for text in outputs.values())
    return seconds, tokens


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
    with tempfile.TemporaryDirectory() as tmp:
        path = write_benchmark(Path(tmp) / "MMStar.tsv", args.rows, 2 * config.vision.image_size)
        bench = ev.read_benchmark(path)
        bare_s, bare_tokens = bare(generator, processor, bench, args.batch, 4 * args.stage_tokens, args.repeats)
        run_s, run_tokens = runner(generator, processor, path, args.batch, args.stage_tokens, Path(tmp), args.repeats)
    print(f"\n{args.rows} rows, batch {args.batch}, greedy, {4 * args.stage_tokens} new tokens per row at most; "
          f"mid config on {jax.devices()[0].platform}")
    print("| side | seconds | rows/s | tokens |\n|---|---|---|---|")
    print(f"| bare generate | {bare_s:.2f} | {args.rows / bare_s:.2f} | {bare_tokens} |")
    print(f"| evaluation runner | {run_s:.2f} | {args.rows / run_s:.2f} | {run_tokens} (re-encoded) |")
    print(f"runner overhead: {100 * (run_s / bare_s - 1):+.1f}%")


if __name__ == "__main__":
    main()
