"""`score`: a prediction file scored against a benchmark file, the report, and VLMEvalKit-layout output files."""
from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

from llavao1_jax.evaluate.benchmarks import Benchmark, read_benchmark
from llavao1_jax.evaluate.extraction import RULES, conclusion, format_valid
from llavao1_jax.evaluate.predictions import read_predictions
from llavao1_jax.evaluate.scoring import Scores, score_rows

ANSWER_FROM = ("conclusion", "full")
JUDGE_COLUMNS = ("index", "question", "answer", "prediction", "category")


def _matched_outputs(bench: Benchmark, outputs: dict[str, str], source: str) -> dict[str, str]:
    """The full output of every benchmark row, by `str(index)`; an error for missing or unknown indices."""
    known = bench.by_index()
    dropped = {str(i) for i in bench.dropped}  # rows without an image: their predictions are ignored, as there
    unknown = [k for k in outputs if k not in known and k not in dropped]
    if unknown:
        raise ValueError(f"{source}: {len(unknown)} prediction index(es) not in benchmark {bench.path}: "
                         f"{unknown[:5]}")
    absent = [k for k in known if k not in outputs]
    if absent:
        raise ValueError(f"{source}: no prediction for {len(absent)} of the {len(known)} rows of {bench.path} "
                         f"(first: {absent[:5]})")
    return {k: outputs[k] for k in known}


def _clean(value):
    return None if isinstance(value, float) and math.isnan(value) else value


def report(bench: Benchmark, scores: Scores, rules: str, answer_from: str,
           format_validity: float | None) -> dict:
    """The summary dict (percent): benchmark, kind, rules, answer_from, n, overall, by_category, by_l2_category,
    plus the kind's own keys (HallusionBench aAcc / fAcc / qAcc, MMBench questions, a `metric` label),
    `needs_judge`, the number of rows VLMEvalKit would send to its GPT judge, and `format_validity`, the percent of
    full outputs with the four stage tags in order (`extraction.format_valid`)."""
    out = {"benchmark": bench.name, "kind": bench.kind, "rules": rules, "answer_from": answer_from,
           "n": len(scores.rows), "overall": _clean(scores.overall),
           "by_category": {k: _clean(v) for k, v in scores.by_category.items()},
           "by_l2_category": {k: _clean(v) for k, v in scores.by_l2_category.items()}}
    out.update(scores.extra)
    out["needs_judge"] = sum(r.needs_judge for r in scores.rows)
    out["format_validity"] = format_validity
    return out


def format_report(summary: dict) -> str:
    """The report as a small text table: overall, then each category and l2-category (percent)."""
    def cell(value):
        return "-" if value is None else f"{value:6.2f}"

    label = summary.get("metric", "accuracy")
    lines = [f"{summary['benchmark']} ({summary['kind']}, rules {summary['rules']}, answer from "
             f"{summary['answer_from']}): {summary['n']} rows, {summary['needs_judge']} need a judge",
             f"  {'overall ' + label:<40}{cell(summary['overall'])}",
             f"  {'format validity (four stage tags)':<40}{cell(summary['format_validity'])}"]
    lines += [f"  {k:<40}{cell(summary[k])}" for k in ("aAcc", "fAcc", "qAcc") if k in summary]
    for group in ("by_category", "by_l2_category"):
        lines += [f"  {name:<40}{cell(value)}" for name, value in summary[group].items()]
    return "\n".join(lines)


def write_atomic(path: Path, text: str):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _csv(rows: list[dict], delimiter: str = ",") -> str:
    buffer = io.StringIO()
    columns = list(dict.fromkeys(k for row in rows for k in row))
    writer = csv.DictWriter(buffer, columns, delimiter=delimiter, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_outputs(workdir: str | Path, bench: Benchmark, scores: Scores, summary: dict) -> list[Path]:
    """Writes `{name}_acc.csv` or `{name}_score.csv` (VLMEvalKit's layout), `{name}_judge_input.tsv` (VLMEvalKit's
    judge columns, for the rows a judge would decide) and `summary.json`; each file whole or not at all."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    written = []
    if scores.table:
        written.append(workdir / f"{bench.name}_{scores.table_suffix}.csv")
        write_atomic(written[-1], _csv(scores.table))
    judge = [{"index": r.row.index, "question": r.row.question, "answer": r.row.answer, "prediction": r.prediction,
              "category": r.row.category} for r in scores.rows if r.needs_judge]
    if judge:
        written.append(workdir / f"{bench.name}_judge_input.tsv")
        write_atomic(written[-1], _csv(judge, delimiter="\t"))
    written.append(workdir / "summary.json")
    write_atomic(written[-1], json.dumps(summary, indent=2) + "\n")
    return written


def score(benchmark: str | Path | Benchmark, predictions: str | Path | dict, rules: str = "p24",
          answer_from: str = "conclusion", workdir: str | Path | None = None, extra_summary: dict | None = None,
          **read_options) -> dict:
    """Scores a prediction file (our jsonl, or VLMEvalKit's xlsx / tsv) against a benchmark TSV by VLMEvalKit's
    rule-based path and returns the report (see `report`; `format_validity` is over the full outputs).
    `answer_from="conclusion"` scores the `<CONCLUSION>` body, `"full"` the whole output as VLMEvalKit would. With
    `workdir`, also writes the files of `write_outputs`; `extra_summary` adds keys to the report. `read_options` go
    to `read_benchmark` (name, kind, keep_none_options)."""
    if rules not in RULES:
        raise ValueError(f"unknown rules {rules!r}; expected one of {RULES}")
    if answer_from not in ANSWER_FROM:
        raise ValueError(f"unknown answer_from {answer_from!r}; expected one of {ANSWER_FROM}")
    bench = benchmark if isinstance(benchmark, Benchmark) else read_benchmark(benchmark, **read_options)
    outputs = {str(k): v for k, v in predictions.items()} if isinstance(predictions, dict) \
        else read_predictions(predictions)
    source = "predictions" if isinstance(predictions, dict) else str(predictions)
    full = _matched_outputs(bench, outputs, source)
    answers = {k: conclusion(text) if answer_from == "conclusion" else text for k, text in full.items()}
    validity = 100 * sum(map(format_valid, full.values())) / len(full) if full else None
    scores = score_rows(bench, answers, rules)
    summary = {**report(bench, scores, rules, answer_from, validity), **(extra_summary or {})}
    if workdir is not None:
        write_outputs(workdir, bench, scores, summary)
    return summary
