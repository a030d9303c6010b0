"""The main job: build the synthetic data, train the small reasoner, evaluate every method on the held-out split,
report. Each phase resumes: the trainer from its last checkpoint, each method from its predictions file, so the
same command continues a run stopped by Ctrl-C."""
from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import ml_collections

from llavao1_jax.config_utils import write_config
from llavao1_jax.reasoner import baseline, evaluation, report

METHOD_ORDER = ("greedy", "sample", "best_of_n", "sentence", "stage", "swires")
TRAINED = "train_summary.json"  # written when training and the export have finished
TIMINGS = "timings.json"
BENCHMARK = "synthetic_reasoning_test.tsv"  # the held-out split as a benchmark file (the name gives its kind)


@contextlib.contextmanager
def timed(workdir: Path, phase: str):
    """Adds the wall time of the block to `workdir/timings.json[phase]` (summed over resumed runs)."""
    path = workdir / TIMINGS
    start = time.perf_counter()
    try:
        yield
    finally:
        timings = json.loads(path.read_text()) if path.exists() else {}
        timings[phase] = timings.get(phase, 0.0) + time.perf_counter() - start
        report.write_json(path, timings)


def train_once(config: ml_collections.ConfigDict, workdir: Path) -> dict:
    """Trains (or resumes training) unless a finished run is in `workdir`; returns the last logged scalars."""
    done = workdir / TRAINED
    if done.exists():
        return json.loads(done.read_text())
    from llavao1_jax.train.loop import train

    with timed(workdir, "train"):
        scalars = train(config, workdir)
    report.write_json(done, scalars)
    return scalars


def method_names(config: ml_collections.ConfigDict) -> list[str]:
    """The names of `config.methods` in table order: by method (`METHOD_ORDER`), then by N."""
    for name, fields in config.methods.items():
        if fields.get("method") not in METHOD_ORDER:
            raise ValueError(f"config.methods.{name}.method={fields.get('method')!r}; choose from {METHOD_ORDER}")
    return sorted(config.methods, key=lambda k: (METHOD_ORDER.index(config.methods[k].method),
                                                 config.methods[k].get("n", 1), k))


def run(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
    """Runs (or resumes) the main job in `workdir`; returns results.json's content."""
    from llavao1_jax.cli.generate import load_for_decoding
    from llavao1_jax.evaluate import synthetic

    workdir = Path(workdir)
    write_config(config, workdir)
    scalars = train_once(config, workdir)
    generator, processor = load_for_decoding(workdir / "hf", config.evaluation.dtype)
    data_dir = workdir / "data"
    benchmark = synthetic.write_synthetic_benchmark(data_dir, workdir / "eval" / BENCHMARK)
    names = method_names(config)
    methods = {}
    with timed(workdir, "eval"):
        for name in names:
            print(f"\n== {name}", flush=True)
            methods[name] = evaluation.evaluate_method(config, name, benchmark, workdir / "eval" / name, generator,
                                                       processor)
    timings = json.loads((workdir / TIMINGS).read_text())
    results = {"methods": methods,
               "image_blind_accuracy": baseline.image_blind_accuracy(data_dir, config.evaluation.limit),
               "train_seconds": timings.get("train", 0.0), "eval_seconds": timings.get("eval", 0.0),
               "train_steps": config.total_steps, "final_train_loss": scalars.get("loss"),
               "task_vocabulary_size": len(generator.decoding_model.head.ids)
               if generator.decoding_model.head.ids is not None else None}
    report.write_json(workdir / report.RESULTS, results)
    report.plot_accuracy(results, workdir / report.PLOT,
                         f"Small reasoner, {methods[next(iter(methods))]['questions']} held-out questions")
    return results
