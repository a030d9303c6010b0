"""The main job on its embedded default: train a small reasoner from scratch on a CPU, evaluate it by method.

    python -m llavao1_jax.main [--workdir runs/tiny_reasoner] [--config configs/tiny_reasoner.py[:steps=300]]
        [--config.methods.stage_4.n=8 ...]

Builds the synthetic reasoning set, trains the `small` Mllama on 8 fake CPU devices (an fsdp=8 mesh) with the
real Llama-3 tokenizer and a task vocabulary, evaluates greedy decoding, best-of-N and stage-level beam search on
the held-out split, and prints the table, an example answer and where every file went. Ctrl-C leaves a workdir the
same command resumes from. `experiments/tiny_reasoner.py` is the same run.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "tiny_reasoner.py"


def fake_cpu_devices(count: int) -> None:
    """Asks XLA for `count` CPU devices unless XLA_FLAGS already says how many (before jax starts its backends)."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()


def print_summary(workdir: Path, results: dict, config) -> None:
    """The results table, one example answer of `config.example_method`, and the files."""
    from llavao1_jax.evaluate.benchmarks import read_benchmark
    from llavao1_jax.reasoner import job, report
    from llavao1_jax.search.result import stage_texts

    print("\n" + report.table(results))
    print(f"\ntrained {results['train_steps']} steps in {results['train_seconds']:.0f} s (final loss "
          f"{results['final_train_loss']:.3f}); evaluation {results['eval_seconds']:.0f} s")
    name = config.example_method
    first = json.loads((workdir / "eval" / name / "predictions.jsonl").read_text().splitlines()[0])
    row = read_benchmark(workdir / "eval" / job.BENCHMARK).by_index()[str(first["index"])]
    print("\n" + report.example(row.question, stage_texts(first["output"]), row.answer, name))
    print(f"\nworkdir {workdir}:")
    for path, what in [(report.RESULTS, "results"), (report.PLOT, "accuracy per method (plot)"),
                       ("config.json", "the resolved config"), ("metrics.jsonl", "training metrics"),
                       ("tensorboard", "TensorBoard events"), ("checkpoints", "orbax checkpoints"),
                       ("hf", "the trained model in transformers format, with its task vocabulary"),
                       ("eval", "per method: predictions.jsonl, summary.json, score tables")]:
        print(f"  {workdir / path}  ({what})")


def cli() -> None:
    """The command line: defines its flags (importing this module defines none), asks for the config's fake CPU
    devices before jax starts its backends, and runs the job. XLA's C++ warnings (e.g. the SPMD partitioner's notes
    on resharding) are hidden unless TF_CPP_MIN_LOG_LEVEL says otherwise."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from absl import app, flags
    from ml_collections import config_flags

    from llavao1_jax.cli.quiet import quiet_library_logs
    from llavao1_jax.reasoner import job

    config = config_flags.DEFINE_config_file("config", str(DEFAULT_CONFIG), "the main job's ml_collections config",
                                             lock_config=True)
    workdir = flags.DEFINE_string("workdir", "runs/tiny_reasoner", "where everything goes (a rerun resumes)")

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments {argv[1:]}")
        fake_cpu_devices(config.value.cpu_devices)
        quiet_library_logs()
        results = job.run(config.value, Path(workdir.value))
        print_summary(Path(workdir.value), results, config.value)

    app.run(main)


if __name__ == "__main__":
    cli()
