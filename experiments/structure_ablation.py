"""The structure ablation: one small reasoner per answer format (direct, untagged, tagged), trained with the same
steps, each scored with greedy decoding on the same held-out questions; writes table.md, results.json and
accuracy.png into the workdir. Every point resumes (it is a main-job run in workdir/<format>).

    python experiments/structure_ablation.py --workdir runs/structure_ablation [--config configs/structure_ablation.py:steps=300]
"""
from __future__ import annotations

from pathlib import Path

from llavao1_jax.main import fake_cpu_devices

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "structure_ablation.py"


def sweep_points(module, config) -> list:
    """The configs of `module.sweep`'s points: copies of `config` with each point's overrides."""
    points = []

    def add(**overrides):
        point = config.copy_and_resolve_references()
        for key, value in overrides.items():
            target = point
            *parents, leaf = key.split(".")
            for parent in parents:
                target = target[parent]
            target[leaf] = value
        points.append((overrides, point))

    module.sweep(add)
    return points


def run(config, workdir: Path, module) -> dict:
    """Trains and scores every answer format; returns {format: {"accuracy", "format_validity"}}."""
    from llavao1_jax.reasoner import job, report

    rows = {}
    for overrides, point in sweep_points(module, config):
        answer_format = overrides["data.answer_format"]
        print(f"\n=== answer format {answer_format}", flush=True)
        greedy = job.run(point, workdir / answer_format)["methods"]["greedy"]
        rows[answer_format] = {"accuracy": greedy["accuracy"], "format_validity":
                               greedy["format_validity"] if answer_format == "tagged" else None,
                               "tokens_per_question": greedy["tokens_per_question"]}
    lines = ["| answer format | accuracy (%) | format validity (%) | generated tokens / question |", "|---|---|---|---|"]
    for name, row in rows.items():
        validity = "-" if row["format_validity"] is None else f"{row['format_validity']:.1f}"
        lines.append(f"| {name} | {row['accuracy']:.1f} | {validity} | {row['tokens_per_question']:.0f} |")
    (workdir / "table.md").write_text("\n".join(lines) + "\n")
    report.write_json(workdir / "results.json", rows)
    plot(rows, workdir / "accuracy.png", steps=config.total_steps)
    print("\n" + "\n".join(lines))
    return rows


def plot(rows: dict, path: Path, steps: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.bar(list(rows), [r["accuracy"] for r in rows.values()], color=["tab:gray", "tab:orange", "tab:blue"],
           label="greedy accuracy")
    ax.set_ylim(0, 100)
    ax.set_xlabel("answer format the model was trained on")
    ax.set_ylabel("accuracy on held-out questions (%)")
    ax.set_title(f"Structure ablation: same model, {steps} training steps each")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cli() -> None:
    fake_cpu_devices(8)
    import importlib.util

    from absl import app, flags
    from ml_collections import config_flags

    config = config_flags.DEFINE_config_file("config", str(CONFIG), "configs/structure_ablation.py", lock_config=True)
    workdir = flags.DEFINE_string("workdir", "runs/structure_ablation", "one main-job workdir per format inside")

    def main(argv):
        del argv
        spec = importlib.util.spec_from_file_location("structure_ablation", CONFIG)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        run(config.value, Path(workdir.value), module)

    app.run(main)


if __name__ == "__main__":
    cli()
