"""Running a model over a benchmark: batched `lj.search` calls (any method, greedy included), each prediction
appended to `W/predictions.jsonl` as its batch completes, a rerun resuming after the rows already there; then the
scores, the tables, summary.json and a VLMEvalKit prediction file."""
from __future__ import annotations

import dataclasses
import io
import json
import os
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from llavao1_jax.evaluate.api import format_report, score, write_atomic
from llavao1_jax.evaluate.benchmarks import Benchmark, read_benchmark, read_table
from llavao1_jax.evaluate.extraction import conclusion
from llavao1_jax.evaluate.predictions import read_predictions
from llavao1_jax.evaluate.prompts import question_prompt
from llavao1_jax.evaluate.scoring import score_row
from llavao1_jax.json_lines import read_objects
from llavao1_jax.search import search

PREDICTIONS = "predictions.jsonl"


def resume(path: Path) -> dict[str, str]:
    """The outputs already in `path` by index; a last line cut short by an interruption is removed first."""
    if not path.exists():
        return {}
    text = path.read_text()
    if text and not text.endswith("\n"):
        write_atomic(path, text[:text.rfind("\n") + 1])
    return read_predictions(path)


def _record(kind: str, row, text: str, tokens: int, generated: float, seconds: float, rules: str,
            answer_from: str) -> dict:
    """One line of predictions.jsonl: the output, its conclusion, what was extracted, the hit, its token count
    (the output re-encoded), and the tokens the search generated (candidates and judge calls) and the seconds of
    its batch, each shared over the batch's rows."""
    body = conclusion(text)
    extracted, hit, _ = score_row(kind, row, body if answer_from == "conclusion" else text, rules)
    return {"index": row.index, "output": text, "conclusion": body, "extracted": extracted, "hit": hit,
            "tokens": tokens, "generated_tokens": generated, "seconds": seconds}


def _generated_tokens(results) -> float:
    """The tokens one `lj.search` call generated (candidates and judge calls), shared over its questions: the
    call ran them as one batch, whose totals every result's trace holds."""
    totals = results[0].trace["totals"]
    return (totals["candidate_tokens"] + totals["judge_tokens"]) / len(results)


def _per_question(path: Path, indices) -> dict:
    """`tokens_per_question` (generated) and `seconds_per_question`: means over the rows `indices` in `path`
    (None where a line lacks the field, as lines written before it existed do)."""
    records = [record for _, record in read_objects(path) if str(record["index"]) in indices]
    means = {}
    for key, field in (("tokens_per_question", "generated_tokens"), ("seconds_per_question", "seconds")):
        values = [record.get(field) for record in records]
        means[key] = float(np.mean(values)) if values and None not in values else None
    return means


def write_vlmevalkit_predictions(bench: Benchmark, outputs: dict[str, str], path: Path, keep_none_options: bool):
    """VLMEvalKit's prediction file for `outputs`: the TSV's columns without `image`, plus `prediction` (xlsx)."""
    table = read_table(bench.path, keep_none_options).drop(columns=["image"], errors="ignore")
    table = table[table["index"].astype(str).isin(outputs)].copy()
    table["prediction"] = [outputs[str(i)] for i in table["index"]]
    buffer = io.BytesIO()
    table.to_excel(buffer, index=False, engine="openpyxl")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)


def run(config, workdir: str | Path, generator, processor, search_config) -> dict:
    """Answers the rows of `config.benchmark` (the first `config.limit` when set) not yet in
    `workdir/predictions.jsonl`, `config.batch_size` questions per `lj.search` call, then scores what is there.
    A row whose image cannot be decoded is skipped and counted (`config.strict`: the run fails)."""
    if search_config.batch_questions is not None and search_config.batch_questions < config.batch_size:
        raise ValueError(f"config.search.batch_questions ({search_config.batch_questions}) is below "
                         f"config.batch_size ({config.batch_size}): the runner's batch_size is the number of rows "
                         f"searched together, lower it instead")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    bench = read_benchmark(config.benchmark, name=config.name or None, kind=config.kind or None,
                           keep_none_options=config.keep_none_options, jpeg_round_trip=config.jpeg_round_trip)
    rows = bench.rows[:config.limit] if config.limit else bench.rows
    path = workdir / PREDICTIONS
    done = resume(path)
    unknown = sorted(set(done) - {str(row.index) for row in rows})
    if unknown:
        raise ValueError(f"{path}: index(es) {unknown[:5]} are not among the rows of {bench.path} being run")
    pending = [row for row in rows if str(row.index) not in done]
    skipped = []
    with open(path, "a") as out, tqdm(total=len(rows), initial=len(rows) - len(pending), unit="row",
                                      desc=bench.name) as bar:
        for start in range(0, len(pending), config.batch_size):
            chunk, questions = [], []
            for row in pending[start:start + config.batch_size]:
                try:
                    image = row.image()
                except ValueError as error:
                    if config.strict:
                        raise ValueError(f"{bench.path}: {error}") from None
                    skipped.append(str(row.index))
                    continue
                chunk.append(row)
                questions.append({"question": question_prompt(row, bench.kind, config.llava_cot), "image": image})
            if questions:
                began = time.perf_counter()
                results = search(generator, processor, questions, search_config)
                seconds = (time.perf_counter() - began) / len(questions)
                generated = _generated_tokens(results)
                for row, result in zip(chunk, results):
                    tokens = len(processor.tokenizer.encode(result.text, add_special_tokens=False))
                    record = _record(bench.kind, row, result.text, tokens, generated, seconds, config.rules,
                                     config.answer_from)
                    out.write(json.dumps(record) + "\n")
                    done[str(row.index)] = result.text
                out.flush()
                os.fsync(out.fileno())
            bar.update(len(pending[start:start + config.batch_size]))
    answered = dataclasses.replace(bench, rows=tuple(row for row in rows if str(row.index) in done))
    summary = score(answered, done, rules=config.rules, answer_from=config.answer_from, workdir=workdir,
                    extra_summary={"skipped_images": skipped, "rows_run": len(rows), **_per_question(path, done)})
    write_vlmevalkit_predictions(bench, done, workdir / f"llavao1_jax_{bench.name}.xlsx", config.keep_none_options)
    print(format_report(summary))
    return summary
