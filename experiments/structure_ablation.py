"""The structure ablation: one small reasoner per answer format (direct, untagged, tagged), trained with the same
steps and scored with greedy decoding on the same held-out questions. The points are the sweep of
configs/structure_ablation.py, each a main-job run (`python -m llavao1_jax.main`) in its own workdir, so a rerun
skips finished points; the script then writes table.md, results.json and accuracy.png into the workdir.

    python experiments/structure_ablation.py --workdir runs/structure_ablation \
        [--config configs/structure_ablation.py:steps=300]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from llavao1_jax import sweep
from llavao1_jax.reasoner import report

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "structure_ablation.py"
MAIN_JOB = [sys.executable, "-m", "llavao1_jax.main"]


def run(config_spec: str, workdir: Path) -> dict:
    """Runs the sweep's points (skipping finished ones) and returns {format: {"accuracy", "format_validity",
    "tokens_per_question"}} from their results.json."""
    points = sweep.sweep_points(config_spec)
    failed = sweep.run_points(MAIN_JOB, config_spec, workdir, points)
    if failed:
        raise RuntimeError(f"{failed} of the {len(points)} points failed; their logs are above")
    rows = {}
    for point in points:
        answer_format = point.overrides["data.answer_format"]
        results = json.loads((workdir / point.name / report.RESULTS).read_text())
        greedy = results["methods"]["greedy"]
        rows[answer_format] = {"accuracy": final_answer_accuracy(workdir / point.name, answer_format),
                               "format_validity": greedy["format_validity"] if answer_format == "tagged" else None,
                               "tokens_per_question": greedy["tokens_per_question"],
                               "image_blind_accuracy": results["image_blind_accuracy"]}
    lines = ["| answer format | accuracy (%) | format validity (%) | generated tokens / question | image-blind (%) |",
             "|---|---|---|---|---|"]
    for name, row in rows.items():
        validity = "-" if row["format_validity"] is None else f"{row['format_validity']:.1f}"
        lines.append(f"| {name} | {row['accuracy']:.1f} | {validity} | {row['tokens_per_question']:.0f} | "
                     f"{row['image_blind_accuracy']:.1f} |")
    (workdir / "table.md").write_text("\n".join(lines) + "\n")
    report.write_json(workdir / "results.json", rows)
    plot(rows, workdir / "accuracy.png")
    print("\n" + "\n".join(lines))
    return rows


def final_answer_accuracy(point_dir: Path, answer_format: str) -> float:
    """Greedy accuracy of a point, the answer read as its format writes it: the <CONCLUSION> body (tagged), the
    last paragraph (untagged: the stages are separated by blank lines, the conclusion last), the whole output
    (direct)."""
    from llavao1_jax import evaluate as ev
    from llavao1_jax.reasoner import job

    outputs = ev.read_predictions(point_dir / "eval" / "greedy" / "predictions.jsonl")
    if answer_format == "untagged":
        outputs = {k: text.strip().split("\n\n")[-1] for k, text in outputs.items()}
    answer_from = "conclusion" if answer_format == "tagged" else "full"
    return ev.score(point_dir / "eval" / job.BENCHMARK, outputs, answer_from=answer_from)["overall"]


def plot(rows: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.bar(list(rows), [r["accuracy"] for r in rows.values()], color="tab:blue", label="greedy accuracy")
    ax.axhline(next(iter(rows.values()))["image_blind_accuracy"], color="tab:red", linestyle="--",
               label="image-blind baseline")
    ax.set_ylim(0, 100)
    ax.set_xlabel("answer format the model was trained on")
    ax.set_ylabel("accuracy on held-out questions (%)")
    ax.set_title("Structure ablation: the same model and training steps")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(CONFIG), help="the sweep config, FILE or FILE:ARG")
    parser.add_argument("--workdir", default="runs/structure_ablation", type=Path)
    args = parser.parse_args()
    run(args.config, args.workdir)


if __name__ == "__main__":
    main()
