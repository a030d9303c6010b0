"""What the main job leaves behind: results.json, the printed table, the accuracy plot, one example answer."""
from __future__ import annotations

import json
import os
from pathlib import Path

RESULTS = "results.json"
PLOT = "accuracy.png"


def write_json(path: Path, value) -> None:
    """Writes `value` as JSON through a temporary file (never half-written)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(tmp, path)


def table(results: dict) -> str:
    """The results as a markdown table, the image-blind baseline last."""
    lines = ["| method | format validity (%) | accuracy (%) | generated tokens / question | seconds / question |",
             "|---|---|---|---|---|"]
    for name, m in results["methods"].items():
        lines.append(f"| {name} | {m['format_validity']:.1f} | {m['accuracy']:.1f} | {m['tokens_per_question']:.0f} "
                     f"| {m['seconds_per_question']:.2f} |")
    lines.append(f"| image-blind baseline (majority answer per question type) | - | "
                 f"{results['image_blind_accuracy']:.1f} | - | - |")
    return "\n".join(lines)


def plot_accuracy(results: dict, path: Path, title: str) -> Path:
    """A bar chart of accuracy per method with the image-blind baseline as a dashed line, written to `path`."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["methods"])
    accuracy = [results["methods"][n]["accuracy"] for n in names]
    tokens = [results["methods"][n]["tokens_per_question"] for n in names]
    fig, ax = plt.subplots(figsize=(1.4 * len(names) + 2.5, 4.2))
    bars = ax.bar(names, accuracy, color="tab:blue", label="accuracy")
    for bar, t in zip(bars, tokens):
        ax.annotate(f"{t:.0f} tok/q", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                    va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
    ax.axhline(results["image_blind_accuracy"], color="tab:red", linestyle="--", label="image-blind baseline")
    ax.set_ylim(0, 100)
    ax.set_xlabel("decoding method (N = candidates per step)")
    ax.set_ylabel("answer accuracy on held-out questions (%)")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    tmp = path.with_name("tmp-" + path.name)
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def example(question: str, stages: dict[str, str], answer: str, method: str) -> str:
    """One held-out question with the four stages of the model's answer and the expected answer."""
    lines = [f"Example ({method}): {question}"]
    lines += [f"  {name:<11}{text}" for name, text in stages.items()]
    lines.append(f"  {'expected':<11}{answer}")
    return "\n".join(lines)
