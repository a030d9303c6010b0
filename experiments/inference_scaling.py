"""Inference scaling in miniature: accuracy against generated tokens and wall time for every decoding method of
configs/inference_scaling.py on one small reasoner, mean and spread over seeds. Writes table.md, results.json and
scaling.png into the workdir; every point resumes from its predictions file.

    python experiments/inference_scaling.py --workdir runs/inference_scaling [--config.scaling.model_dir=DIR]
"""
from __future__ import annotations

import statistics
from pathlib import Path

from llavao1_jax.main import fake_cpu_devices

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "inference_scaling.py"


def points(scaling) -> list[tuple[str, dict]]:
    """(series name, lj.SearchConfig fields) of every point, seeds included."""
    out = [("greedy", dict(method="greedy"))]
    for seed in range(scaling.seeds):
        out.append(("sample", dict(method="sample", seed=seed)))
        out.append((f"swires/{scaling.swires_judge}", dict(method="swires", judge=scaling.swires_judge, seed=seed)))
        for search in scaling.searches:
            for judge in scaling.judges:
                for n in scaling.ns:
                    out.append((f"{search}/{judge}", dict(method=search, judge=judge, n=n, seed=seed)))
    return out


def summarise(figures: list[tuple[str, dict, dict]]) -> list[dict]:
    """One row per (series, N): accuracy mean and standard deviation over seeds, mean tokens and seconds."""
    groups: dict[tuple, list[dict]] = {}
    for series, fields, result in figures:
        groups.setdefault((series, fields.get("n", 1)), []).append(result)
    rows = []
    for (series, n), results in groups.items():
        accuracy = [r["accuracy"] for r in results]
        rows.append({"series": series, "n": n, "seeds": len(results), "accuracy": statistics.mean(accuracy),
                     "accuracy_std": statistics.stdev(accuracy) if len(accuracy) > 1 else 0.0,
                     "format_validity": statistics.mean(r["format_validity"] for r in results),
                     "tokens_per_question": statistics.mean(r["tokens_per_question"] for r in results),
                     "seconds_per_question": statistics.mean(r["seconds_per_question"] for r in results)})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| method / judge | N | seeds | accuracy (%) | format validity (%) | generated tokens / question | "
             "seconds / question |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['series']} | {r['n']} | {r['seeds']} | {r['accuracy']:.1f} ± {r['accuracy_std']:.1f} | "
                     f"{r['format_validity']:.1f} | {r['tokens_per_question']:.0f} | {r['seconds_per_question']:.2f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, questions: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    for ax, key, label in [(axes[0], "tokens_per_question", "generated tokens per question (log scale)"),
                           (axes[1], "seconds_per_question", "wall seconds per question (log scale)")]:
        for series in dict.fromkeys(r["series"] for r in rows):
            line = sorted((r for r in rows if r["series"] == series), key=lambda r: r["n"])
            ax.errorbar([r[key] for r in line], [r["accuracy"] for r in line],
                        yerr=[r["accuracy_std"] for r in line], marker="o", capsize=3, label=series)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
        for r in rows:
            if r["n"] > 1:
                ax.annotate(f"N={r['n']}", (r[key], r["accuracy"]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
    axes[0].set_ylabel("accuracy on held-out questions (%)")
    axes[1].legend(fontsize=8, loc="best")
    fig.suptitle(f"Inference scaling of the small reasoner ({questions} questions; error bars: std over seeds; "
                 "seconds include compilation)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(config, workdir: Path) -> list[dict]:
    """Evaluates every point (resuming), then writes the table, results.json and the plot."""
    from llavao1_jax.cli.generate import load_for_decoding
    from llavao1_jax.evaluate import synthetic
    from llavao1_jax.reasoner import evaluation, job, report

    workdir.mkdir(parents=True, exist_ok=True)
    model_dir = Path(config.scaling.model_dir) if config.scaling.model_dir else None
    if model_dir is None:
        job.train_once(config, workdir)
        model_dir = workdir / "hf"
    data_dir = Path(config.data.data_dir) if config.data.data_dir else model_dir.parent / "data"
    benchmark = synthetic.write_synthetic_benchmark(data_dir, workdir / job.BENCHMARK)
    generator, processor = load_for_decoding(model_dir, config.evaluation.dtype)
    figures = []
    for series, fields in points(config.scaling):
        name = "_".join(f"{k}{v}" if k != "method" else str(v) for k, v in fields.items())
        point = config.copy_and_resolve_references()
        point.methods = {name: fields}
        print(f"\n== {name}", flush=True)
        result = evaluation.evaluate_method(point, name, benchmark, workdir / "points" / name, generator, processor)
        figures.append((series, fields, result))
    rows = summarise(figures)
    (workdir / "table.md").write_text(table(rows) + "\n")
    report.write_json(workdir / "results.json", rows)
    plot(rows, workdir / "scaling.png", figures[0][2]["questions"])  # the questions scored, not the config's
    print("\n" + table(rows))
    return rows


def cli() -> None:
    from absl import app, flags
    from ml_collections import config_flags

    config = config_flags.DEFINE_config_file("config", str(CONFIG), "configs/inference_scaling.py", lock_config=True)
    workdir = flags.DEFINE_string("workdir", "runs/inference_scaling", "points, table and plot")

    def main(argv):
        del argv
        fake_cpu_devices(config.value.cpu_devices)
        run(config.value, Path(workdir.value))

    app.run(main)


if __name__ == "__main__":
    cli()
