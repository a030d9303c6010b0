"""Scoring known predictions against accuracies worked out by hand from VLMEvalKit's rules (in the comments), the
files written, rescoring from our jsonl and from VLMEvalKit's tsv / xlsx prediction files, and bad input."""
import csv
import json

import pandas as pd
import pytest

from llavao1_jax import evaluate as ev
from evaluate_files import png_base64, write_tsv

IMAGE = png_base64((255, 0, 0))


def _tagged(answer):
    return f"<SUMMARY>s</SUMMARY>\n<CAPTION>c</CAPTION>\n<REASONING>r</REASONING>\n<CONCLUSION>{answer}</CONCLUSION>"


def _jsonl(path, outputs):
    path.write_text("".join(json.dumps({"index": k, "output": v}) + "\n" for k, v in outputs.items()))
    return path


def _mmstar(tmp_path):
    rows = [(0, "A", "math"), (1, "B", "math"), (2, "C", "science"), (3, "D", "science"), (4, "A", "science")]
    return write_tsv(tmp_path / "MMStar.tsv", [
        dict(index=i, question=f"q{i}", answer=a, category=c, A="one", B="two", C="three", D="four", image=IMAGE)
        for i, a, c in rows])


# hit, hit? row by row: A right; C for B wrong; "The answer is C." right; D right; nothing inferable: wrong, judge.
# Format: rows 0-2 tagged in order; row 3 misses </CAPTION>; row 4 has CAPTION before SUMMARY: 3 of 5 valid.
MMSTAR_OUTPUTS = {0: _tagged("A"), 1: _tagged("C"), 2: _tagged("The answer is C."),
                  3: _tagged("D").replace("</CAPTION>", ""),
                  4: "<CAPTION>c</CAPTION> <SUMMARY>s</SUMMARY> <REASONING>r</REASONING> <CONCLUSION>hmm</CONCLUSION>"}


def test_mmstar_vanilla_accuracy_and_files(tmp_path):
    report = ev.score(_mmstar(tmp_path), _jsonl(tmp_path / "p.jsonl", MMSTAR_OUTPUTS), workdir=tmp_path / "w")
    assert report == {"benchmark": "MMStar", "kind": "mmstar", "rules": "p24", "answer_from": "conclusion", "n": 5,
                      "overall": pytest.approx(60.0), "by_category": {"math": 50.0, "science": pytest.approx(200 / 3)},
                      "by_l2_category": {}, "questions": 5, "needs_judge": 1, "format_validity": 60.0}
    assert (tmp_path / "w" / "MMStar_acc.csv").read_text() == \
        "split,Overall,math,science\nnone,0.6,0.5,0.6666666666666666\n"
    with open(tmp_path / "w" / "MMStar_judge_input.tsv") as f:
        assert list(csv.DictReader(f, delimiter="\t")) == [
            {"index": "4", "question": "q4", "answer": "A", "prediction": "hmm", "category": "science"}]
    assert json.loads((tmp_path / "w" / "summary.json").read_text())["overall"] == pytest.approx(60.0)


def test_answer_from_full_scores_the_whole_output(tmp_path):
    output = ("<REASONING>Option A is wrong and B is right</REASONING>\n<CONCLUSION>B</CONCLUSION>")
    path = write_tsv(tmp_path / "MMStar.tsv", [dict(index=0, question="q", answer="B", category="c", A="x", B="y",
                                                    image=IMAGE)])
    assert ev.score(path, {0: output})["overall"] == 100.0
    assert ev.score(path, {0: output}, answer_from="full")["overall"] == 0.0  # letters A and B: nothing inferred


def test_rescoring_from_jsonl_tsv_and_xlsx_agree(tmp_path):
    bench = _mmstar(tmp_path)
    # VLMEvalKit's prediction file: the TSV's columns without `image`, plus `prediction`.
    table = pd.read_csv(bench, sep="\t").drop(columns="image")
    table["prediction"] = [MMSTAR_OUTPUTS[i] for i in table["index"]]
    table.to_csv(tmp_path / "model_MMStar.tsv", sep="\t", index=False)
    table.to_excel(tmp_path / "model_MMStar.xlsx", index=False)
    reports = [ev.score(bench, tmp_path / name) for name in ("model_MMStar.tsv", "model_MMStar.xlsx")]
    assert reports[0] == reports[1] == ev.score(bench, _jsonl(tmp_path / "p.jsonl", MMSTAR_OUTPUTS))


def test_mmbench_circular_accuracy_is_over_groups(tmp_path):
    common = dict(question="q", **{"l2-category": "coarse_perception"}, split="dev", image=IMAGE)
    rows = [  # (index, answer, category, prediction)
        (0, "A", "ocr", "A"), (1_000_000, "B", "ocr", "B"),          # group 0: both right -> right
        (1, "C", "ocr", "C"), (1_000_001, "A", "ocr", "B"),          # group 1: one rotation wrong -> wrong
        (2, "B", "scene", "B"), (1_000_002, "A", "scene", "dunno")]  # group 2: one undecided -> wrong
    path = write_tsv(tmp_path / "MMBench_DEV_EN_V11.tsv", [
        dict(common, index=i, answer=a, category=c, A="p", B="q", C="r", **({} if i < 3 else {"image": i % 1_000_000}))
        for i, a, c, _ in rows])
    report = ev.score(path, {i: p for i, *_, p in rows}, workdir=tmp_path / "w")
    assert (report["n"], report["questions"]) == (6, 3)
    assert report["overall"] == pytest.approx(100 / 3)  # 1 of 3 groups (row by row it would be 4 of 6)
    assert report["by_category"] == {"ocr": 50.0, "scene": 0.0}
    assert report["by_l2_category"] == {"coarse_perception": pytest.approx(100 / 3)}
    assert (tmp_path / "w" / "MMBench_DEV_EN_V11_acc.csv").read_text() == \
        "split,Overall,CP,ocr,scene\ndev,0.3333333333333333,0.3333333333333333,0.5,0.0\n"


def test_hallusionbench_aacc_facc_qacc(tmp_path):
    rows = [  # index (fields 3, 4, 5: set, figure, question), l2-category, answer, prediction
        ("VD_figure_0_0_0_0", "VD_figure", "Yes", "Yes"),  # right
        ("VD_figure_0_0_1_0", "VD_figure", "No", "No."),   # right
        ("VD_figure_0_0_0_1", "VD_figure", "Yes", "No"),   # wrong
        ("VS_chart_0_1_0_0", "VS_chart", "No", "no"),      # right
        ("VS_chart_0_1_1_0", "VS_chart", "Yes", "maybe")]  # Unknown: wrong
    path = write_tsv(tmp_path / "HallusionBench.tsv", [
        dict(index=i, image=IMAGE, question="q", answer=a, category=i[:2], **{"l2-category": l2})
        for i, l2, a, _ in rows])
    report = ev.score(path, {i: p for i, *_, p in rows}, answer_from="full", workdir=tmp_path / "w")
    # aAcc 3/5. Figure groups (l2, set, figure): (VD,0,0) rows 1,3 no; (VD,0,1) yes; (VS,1,0) yes; (VS,1,1) no: 2/4.
    # Question groups (l2, set, question): (VD,0,0) rows 1,2 yes; (VD,0,1) no; (VS,1,0) rows 4,5 no: 1/3.
    assert report["aAcc"] == pytest.approx(60.0)
    assert report["fAcc"] == pytest.approx(50.0)
    assert report["qAcc"] == pytest.approx(100 / 3)
    assert report["overall"] == pytest.approx((60 + 50 + 100 / 3) / 3)
    # VD: aAcc 2/3, fAcc 1/2, qAcc 1/2. VS: aAcc 1/2, fAcc 1/2, qAcc 0/1.
    assert report["by_category"] == {"VD": pytest.approx((200 / 3 + 50 + 50) / 3), "VS": pytest.approx(100 / 3)}
    assert report["needs_judge"] == 1
    with open(tmp_path / "w" / "HallusionBench_score.csv") as f:
        table = list(csv.DictReader(f))
    assert [line["split"] for line in table] == ["Overall", "VD", "VS", "VD_figure", "VS_chart"]
    assert float(table[0]["fAcc"]) == pytest.approx(50.0)


def test_mathvista_prefetch_rules(tmp_path):
    common = dict(image=IMAGE, precision="", question="q")
    rows = [  # fields, prediction, task
        (dict(index=1, answer="4", question_type="multi_choice", answer_type="text", answer_option="B",
              choices="['2', '4']"), "B", "fqa"),                        # letter right
        (dict(index=2, answer="cat", question_type="multi_choice", answer_type="text", answer_option="A",
              choices="['cat', 'dog', 'cow']"), "dog", "fqa"),           # text gives B: fetched, wrong
        (dict(index=3, answer="3", question_type="free_form", answer_type="integer"), " 3 ", "fqa"),   # right
        (dict(index=4, answer="1.5", question_type="free_form", answer_type="float"), "1.50", "mwp"),  # right
        (dict(index=5, answer="cat", question_type="free_form", answer_type="text"), "cat", "mwp"),    # never right
        (dict(index=6, answer="7", question_type="free_form", answer_type="integer"), "seven", "mwp")]  # not fetched
    skills = lambda i: "['arithmetic reasoning', 'algebraic reasoning']" if i >= 4 else "['arithmetic reasoning']"
    path = write_tsv(tmp_path / "MathVista_MINI.tsv", [dict(common, **f, task=t, skills=skills(f["index"]))
                                                        for f, _, t in rows])
    report = ev.score(path, {f["index"]: p for f, p, _ in rows}, workdir=tmp_path / "w")
    assert report["metric"] == "mathvista_rule_based"
    assert report["overall"] == pytest.approx(50.0)  # rows 1, 3, 4 of 6
    assert report["by_category"] == {"fqa": pytest.approx(200 / 3), "mwp": pytest.approx(100 / 3)}
    assert report["by_l2_category"] == {"algebraic reasoning": pytest.approx(100 / 3), "arithmetic reasoning": 50.0}
    assert report["needs_judge"] == 2  # rows 5 and 6
    with open(tmp_path / "w" / "MathVista_MINI_score.csv") as f:
        overall = next(csv.DictReader(f))
    assert overall == {"Task&Skill": "Overall", "tot": "6", "prefetch": "4", "hit": "3",
                       "prefetch_rate": str(400 / 6), "acc": "50.0"}


def test_mathvista_right_zero_is_left_to_the_judge_and_table_order(tmp_path):
    # VLMEvalKit's prefetch returns the parsed number and tests its truth: a right "0" is not prefetched. The
    # score table lists keys as VLMEvalKit first meets them: Overall, the first row's skills, its task, ...
    common = dict(image=IMAGE, precision="", question="q", question_type="free_form", answer_option="",
                  choices="")
    rows = [dict(common, index=1, answer="0", answer_type="integer", task="fqa", skills="['statistical reasoning']"),
            dict(common, index=2, answer="2", answer_type="integer", task="mwp", skills="arithmetic reasoning")]
    path = write_tsv(tmp_path / "MathVista_MINI.tsv", rows)
    report = ev.score(path, {1: "0", 2: "2"}, workdir=tmp_path / "w")
    assert (report["overall"], report["needs_judge"]) == (50.0, 1)
    with open(tmp_path / "w" / "MathVista_MINI_score.csv") as f:
        table = list(csv.DictReader(f))
    assert [(line["Task&Skill"], line["prefetch"], line["hit"]) for line in table] == [
        ("Overall", "1", "1"), ("statistical reasoning", "0", "0"), ("fqa", "0", "0"),
        ("arithmetic reasoning", "1", "1"), ("mwp", "1", "1")]


def test_mmbench_group_without_its_base_row_is_left_out(tmp_path):
    # VLMEvalKit scores a circular group from its base row (index == g_index); rotations whose base row is absent
    # are not scored at all.
    common = dict(question="q", **{"l2-category": "coarse_perception"}, split="dev", A="p", B="q", image=IMAGE)
    path = write_tsv(tmp_path / "MMBench_DEV_EN_V11.tsv", [
        dict(common, index=0, answer="A", category="ocr"), dict(common, index=1_000_000, answer="B", category="ocr"),
        dict(common, index=1_000_001, answer="A", category="scene")])
    report = ev.score(path, {0: "A", 1_000_000: "B", 1_000_001: "A"})
    assert (report["n"], report["questions"], report["overall"]) == (3, 1, 100.0)
    assert report["by_category"] == {"ocr": 100.0}


def test_mmvet_goes_to_the_judge_file(tmp_path):
    path = write_tsv(tmp_path / "MMVet.tsv", [dict(index=i, image=IMAGE, question=f"q{i}", answer="cat<OR>kitten",
                                                   category="rec,know") for i in range(2)])
    report = ev.score(path, {0: _tagged("a cat"), 1: "a kitten"}, workdir=tmp_path / "w")
    assert (report["overall"], report["needs_judge"], report["metric"]) == (None, 2, "needs_gpt_judge")
    with open(tmp_path / "w" / "MMVet_judge_input.tsv") as f:
        assert list(csv.DictReader(f, delimiter="\t")) == [
            {"index": str(i), "question": f"q{i}", "answer": "cat<OR>kitten", "prediction": p, "category": "rec,know"}
            for i, p in ((0, "a cat"), (1, "a kitten"))]
    assert not (tmp_path / "w" / "MMVet_acc.csv").exists()


def test_bad_prediction_files(tmp_path):
    bench = _mmstar(tmp_path)
    with pytest.raises(ValueError, match=r"p.jsonl: 1 prediction index\(es\) not in benchmark .*\['99'\]"):
        ev.score(bench, _jsonl(tmp_path / "p.jsonl", {**MMSTAR_OUTPUTS, 99: "A"}))
    with pytest.raises(ValueError, match="no prediction for 1 of the 5 rows"):
        ev.score(bench, _jsonl(tmp_path / "p.jsonl", {k: v for k, v in MMSTAR_OUTPUTS.items() if k != 2}))
    (tmp_path / "bad.jsonl").write_text('{"index": 0, "output": "A"}\n{"index": 1\n')
    with pytest.raises(ValueError, match="bad.jsonl: line 2 is not JSON"):
        ev.score(bench, tmp_path / "bad.jsonl")
    pd.DataFrame({"index": [0], "answer": ["A"]}).to_csv(tmp_path / "p.tsv", sep="\t", index=False)
    with pytest.raises(ValueError, match=r"p.tsv: missing column\(s\) \['prediction'\]"):
        ev.score(bench, tmp_path / "p.tsv")
    with pytest.raises(ValueError, match="unknown answer_from 'last'"):
        ev.score(bench, MMSTAR_OUTPUTS, answer_from="last")
    assert not list(tmp_path.glob("w*"))  # nothing written on error
