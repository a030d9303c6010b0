"""VLMEvalKit's rule-based scoring per benchmark kind: vanilla and circular multiple choice, HallusionBench's
aAcc / fAcc / qAcc, MathVista's prefetch rules (our own judge-free metric, `mathvista_rule_based`), and MMVet left
to a judge; and our synthetic reasoning set (option letters, or the normalised open answer). Each scorer returns
per-row results and the tables VLMEvalKit writes."""
from __future__ import annotations

import ast
import collections
import dataclasses

import numpy as np

from llavao1_jax.evaluate.benchmarks import MC_KINDS, Benchmark, Row
from llavao1_jax.evaluate.extraction import extract_option, extract_yes_no, normalised_answer

CIRCULAR_STRIDE = 1_000_000
# VLMEvalKit's column names for MMBench's l2 categories in `*_acc.csv`.
MMB_ABBREVIATIONS = {"coarse_perception": "CP", "finegrained_perception (instance-level)": "FP-S",
                     "finegrained_perception (cross-instance)": "FP-C", "logic_reasoning": "LR",
                     "relation_reasoning": "RR", "attribute_reasoning": "AR"}


@dataclasses.dataclass(frozen=True)
class RowResult:
    """One row's score: the answer scored, what was extracted from it, and whether it is right. `needs_judge`
    marks rows VLMEvalKit would hand to its GPT judge (they count as wrong here)."""

    row: Row
    prediction: str
    extracted: str | None
    hit: bool
    needs_judge: bool


@dataclasses.dataclass(frozen=True)
class Scores:
    """Per-row results, the headline numbers (percent) and the VLMEvalKit tables: `table` is a list of dicts, one
    per CSV row, written as `{name}_{table_suffix}.csv`."""

    rows: list[RowResult]
    overall: float | None
    by_category: dict
    by_l2_category: dict
    table: list[dict]
    table_suffix: str | None
    extra: dict = dataclasses.field(default_factory=dict)


def _mean(values) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def _breakdown(items, key, scale: float = 100) -> dict:
    """Mean hit (percent, or times `scale`) per sorted value of `key(row)` over `(row, hit)` pairs."""
    groups = collections.defaultdict(list)
    for row, hit in items:
        if key(row) is not None:
            groups[key(row)].append(hit)
    return {k: scale * _mean(groups[k]) for k in sorted(groups)}


def _acc_table(items) -> list[dict]:
    """VLMEvalKit's `report_acc`: per split, `Overall`, then per sorted l2-category and category (fractions)."""
    splits = sorted({row.split or "none" for row, _ in items})
    table = []
    for split in splits:
        sub = [(row, hit) for row, hit in items if (row.split or "none") == split]
        line = {"split": split, "Overall": _mean([hit for _, hit in sub])}
        for attr in ("l2_category", "category"):
            for name, value in _breakdown(sub, lambda r: getattr(r, attr), scale=1).items():
                line[MMB_ABBREVIATIONS.get(name, name)] = value
        table.append(line)
    return table


def score_row(kind: str, row: Row, prediction: str, rules: str) -> tuple[str | None, bool, bool]:
    """One answer by its benchmark kind's rule: (what was extracted, whether it is right, whether VLMEvalKit
    would hand it to its GPT judge)."""
    if kind in MC_KINDS:
        extracted = extract_option(prediction, row.options, rules)
        return extracted, extracted == row.answer, extracted is None
    if kind == "hallusionbench":
        extracted = extract_yes_no(prediction)
        return extracted, extracted == row.answer, extracted == "Unknown"
    if kind == "synthetic_reasoning":  # our own set: no judge; choice rows by letter, open rows by exact match
        if row.options:
            extracted = extract_option(prediction, row.options, rules)
            return extracted, extracted == row.answer, False
        extracted = normalised_answer(prediction)
        return extracted, extracted == normalised_answer(row.answer), False
    if kind == "mathvista":
        extracted, hit = mathvista_prefetch(row, prediction, rules)
        return extracted, hit, extracted is None
    return None, False, True  # MMVet: a GPT judge only


def _row_results(bench: Benchmark, answers: dict[str, str], rules: str) -> list[RowResult]:
    return [RowResult(row, answers[str(row.index)], *score_row(bench.kind, row, answers[str(row.index)], rules))
            for row in bench]


def score_multiple_choice(bench: Benchmark, answers: dict[str, str], rules: str) -> Scores:
    """Vanilla multiple choice (MMStar, AI2D; also our synthetic set, row by row), or circular for MMBench: a
    question counts only when every rotation in its group (`g_index`, else `index % 1_000_000`) is inferred and
    right; accuracy is over the groups. As in VLMEvalKit, a group is scored only when its base row (the one whose
    index is the group's key) is present, and it takes that row's category and split."""
    results = _row_results(bench, answers, rules)
    if bench.kind == "mmbench":
        groups = collections.defaultdict(list)
        for result in results:
            key = result.row.fields.get("g_index")
            groups[int(key) if key is not None else int(result.row.index) % CIRCULAR_STRIDE].append(result)
        base = {int(r.row.index): r.row for r in results}
        items = [(base[key], all(r.hit for r in group)) for key, group in sorted(groups.items()) if key in base]
    else:
        items = [(r.row, r.hit) for r in results]
    return Scores(results, 100 * _mean([hit for _, hit in items]), _breakdown(items, lambda r: r.category),
                  _breakdown(items, lambda r: r.l2_category), _acc_table(items), "acc",
                  extra={"questions": len(items)})


def hallusion_ids(row: Row) -> tuple[str, str, str]:
    """(set_id, figure_id, question_id): fields 3, 4 and 5 of the `_`-split HallusionBench index."""
    parts = str(row.index).split("_")
    if len(parts) < 6:
        raise ValueError(f"HallusionBench row {row.index!r}, column 'index': expected at least six '_'-separated "
                         f"fields (set_id, figure_id, question_id are fields 3, 4, 5)")
    return parts[3], parts[4], parts[5]


def _hallusion_accuracies(results: list[RowResult]) -> dict[str, float]:
    figures, questions = collections.defaultdict(list), collections.defaultdict(list)
    for r in results:
        set_id, figure_id, question_id = hallusion_ids(r.row)
        figures[(r.row.l2_category, set_id, figure_id)].append(r.hit)
        questions[(r.row.l2_category, set_id, question_id)].append(r.hit)
    return {"aAcc": 100 * _mean([r.hit for r in results]),
            "fAcc": 100 * _mean([all(v) for v in figures.values()]),
            "qAcc": 100 * _mean([all(v) for v in questions.values()])}


def score_hallusionbench(bench: Benchmark, answers: dict[str, str]) -> Scores:
    """HallusionBench: yes/no extraction; aAcc over rows, fAcc over figure groups, qAcc over question groups
    (percent), per split: Overall, each category, each l2-category. `overall` is the mean of the three."""
    results = _row_results(bench, answers, rules="p24")
    overall = _hallusion_accuracies(results)
    table = [{"split": "Overall", **overall}]
    by = {}
    for attr, name in (("category", "by_category"), ("l2_category", "by_l2_category")):
        by[name] = {}
        for value in sorted({getattr(r.row, attr) for r in results} - {None}):
            accuracies = _hallusion_accuracies([r for r in results if getattr(r.row, attr) == value])
            table.append({"split": value, **accuracies})
            by[name][value] = float(np.mean(list(accuracies.values())))
    return Scores(results, float(np.mean(list(overall.values()))), by["by_category"], by["by_l2_category"], table,
                  "score", extra=overall)


def mathvista_prefetch(row: Row, prediction: str, rules: str) -> tuple[str | None, bool]:
    """VLMEvalKit's `post_check(prefetch=True)`: (what was prefetched, whether it is right); None when the prefetch
    fails and VLMEvalKit would ask its judge. Multiple choice: `can_infer` against the choices, right when it equals
    `answer_option`; integer / float answers: `int()` / `float()` of the whole prediction, prefetched only when it
    equals the answer's and is not zero (VLMEvalKit tests the returned value's truth, so a right 0 goes to the
    judge); text and list answers are never prefetched (as there)."""
    if row.fields["question_type"] == "multi_choice":
        letter = extract_option(prediction, row.options, rules)
        return letter, letter is not None and letter == row.fields["answer_option"]
    cast = {"integer": int, "float": float}.get(row.fields["answer_type"])
    if cast is None:
        return None, False
    try:
        value = cast(prediction)
        right = value == cast(row.answer)
    except ValueError:
        return None, False
    return (str(value), True) if right and value else (None, False)


def _skills(row: Row) -> list[str]:
    """The row's skills: a Python-list string, or else the text itself as one skill (as VLMEvalKit reads it)."""
    value = row.fields.get("skills")
    if not isinstance(value, str):
        return []
    return list(ast.literal_eval(value)) if value.startswith("[") else [value]


def score_mathvista(bench: Benchmark, answers: dict[str, str], rules: str) -> Scores:
    """MathVista by the prefetch rules alone (`mathvista_rule_based`, our metric: VLMEvalKit needs a GPT judge for
    the rest). Rows whose prefetch fails are marked for a judge. The table is VLMEvalKit's `*_score.csv` layout:
    `Task&Skill, tot, prefetch, hit, prefetch_rate, acc`, for Overall, each task and each skill."""
    results = _row_results(bench, answers, rules)
    groups = collections.defaultdict(list)
    for r in results:
        for key in ["Overall", *_skills(r.row), r.row.fields.get("task")]:  # VLMEvalKit's order of first sight
            if key is not None:
                groups[key].append(r)
    table = []
    for key, members in groups.items():
        tot, fetched, hits = len(members), sum(not r.needs_judge for r in members), sum(r.hit for r in members)
        table.append({"Task&Skill": key, "tot": tot, "prefetch": fetched, "hit": hits,
                      "prefetch_rate": 100 * fetched / tot, "acc": 100 * hits / tot})
    skill_names = sorted({skill for r in results for skill in _skills(r.row)})
    skills = {skill: 100 * _mean([r.hit for r in groups[skill]]) for skill in skill_names}
    tasks = _breakdown([(r.row, r.hit) for r in results], lambda row: row.fields.get("task"))
    return Scores(results, table[0]["acc"], tasks, skills, table, "score", extra={"metric": "mathvista_rule_based"})


def score_mmvet(bench: Benchmark, answers: dict[str, str]) -> Scores:
    """MMVet is judged by GPT only: every row is marked for the judge and no accuracy is given."""
    results = _row_results(bench, answers, rules="p24")
    return Scores(results, None, {}, {}, [], None, extra={"metric": "needs_gpt_judge"})


def score_rows(bench: Benchmark, answers: dict[str, str], rules: str) -> Scores:
    """Scores `answers` (keyed by `str(index)`, one per row) against `bench` by its kind's rules."""
    if bench.kind in (*MC_KINDS, "synthetic_reasoning"):
        return score_multiple_choice(bench, answers, rules)
    if bench.kind == "hallusionbench":
        return score_hallusionbench(bench, answers)
    if bench.kind == "mathvista":
        return score_mathvista(bench, answers, rules)
    return score_mmvet(bench, answers)
