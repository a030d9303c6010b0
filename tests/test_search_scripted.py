"""The search logic against a scripted stand-in model (tests/scripted_generator.py) that writes known texts and
known verdicts: stage order, each stage's winner is the one the judge prefers after n - 1 comparisons, the
reasoning pre-check, truncation, unparseable verdicts, probability verdicts, and SWIRES stopping and retracing."""
import re

import numpy as np
import pytest

import llavao1_jax as lj
from llavao1_jax.search.prompts import STAGES
from scripted_generator import ScriptedGenerator

N = 5
QUESTIONS = [{"question": "How many squares?"}, {"question": "Which colour is the largest shape?"}]


@pytest.fixture(scope="module")
def processor():
    return lj.Processor.llama3_2_vision()


def score_of(copy: int, stage: str) -> int:
    """Candidate `copy`'s score in `stage`: a fixed shuffle, so the best is never the first or the last copy."""
    return (copy * 3 + STAGES.index(stage)) % N


def current_stage(prompt: str) -> str:
    return STAGES[sum(f"</{s}>" in prompt for s in STAGES)]


def make_writer(verdicts: str = "prefer", long_caption_copy: int = 1):
    """Candidates write '<STAGE> score=K </STAGE>' (copy 0's reasoning also says 'bad'; one caption never closes);
    the judge prefers the higher score; the pre-check calls 'bad' reasoning incorrect."""

    def writer(prompt: str, copy: int) -> str:
        if "Reply with one word" in prompt:
            reasoning = prompt.split("Reasoning: ")[1]
            return "incorrect" if "bad" in reasoning else "correct"
        if "Response 1:" in prompt:
            first, second = (int(x) for x in re.findall(r"Response [12]: <\w+> score=(\d+)", prompt))
            if verdicts == "unreadable":
                return "Both are fine."
            return f"Since it is more thorough, I choose response {1 if first > second else 2}."
        stage = current_stage(prompt)
        if stage == "CAPTION" and copy == long_caption_copy:
            return f"<CAPTION> score={score_of(copy, stage)} " + "and more " * 40
        bad = " bad" if stage == "REASONING" and copy == 0 else ""
        return f"<{stage}> score={score_of(copy, stage)}{bad} </{stage}>"

    return writer


def best(stage: str) -> int:
    scores = [score_of(c, stage) - (100 if stage == "REASONING" and c == 0 else 0) for c in range(N)]
    return int(np.argmax(scores))


@pytest.mark.parametrize("verdict", ["generate", "probability"])
def test_each_stage_keeps_the_judges_choice(processor, verdict):
    generator = ScriptedGenerator(processor, make_writer())
    config = lj.SearchConfig(method="stage", n=N, verdict=verdict, max_stage_tokens=24, judge_max_tokens=24)
    results = lj.search(generator, processor, QUESTIONS, config)
    # the questions once, the judge's constant head once a stage (text-only questions), the pre-check prompts once
    assert generator.prefills == 1 + len(STAGES) + 1
    for r in results:
        assert [s["kind"] for s in r.trace["steps"]] == list(STAGES)
        closing = [r.text.index(f"</{s}>") for s in STAGES]
        assert closing == sorted(closing)
        for step, stage in zip(r.trace["steps"], STAGES):
            assert step["winner"] == best(stage), stage
            assert len(step["comparisons"]) == N - 1
            assert r.stages[stage].startswith(f"score={score_of(best(stage), stage)}")
        reasoning = r.trace["steps"][2]
        assert reasoning["precheck"] == [False] + [True] * (N - 1)
        decided = [c for c in reasoning["comparisons"] if 0 in c["pair"]]
        assert decided and all(c["by"] == "precheck" and c["winner"] != 0 for c in decided)
        caption = r.trace["steps"][1]["candidates"]
        assert caption[1]["truncated"] and caption[1]["text"].endswith("</CAPTION>")
        assert not any(c["truncated"] for i, c in enumerate(caption) if i != 1)
        assert r.answer == f"score={score_of(best('CONCLUSION'), 'CONCLUSION')}"
    totals = results[0].trace["totals"]
    assert totals["unparsed_verdicts"] == 0
    assert totals["judge_calls"] == len(QUESTIONS) * (len(STAGES) * (N - 1) + N)


def test_unparseable_verdicts_pick_response_two_and_are_counted(processor):
    generator = ScriptedGenerator(processor, make_writer(verdicts="unreadable"))
    config = lj.SearchConfig(method="stage", n=N, max_stage_tokens=24, judge_max_tokens=24)
    results = lj.search(generator, processor, QUESTIONS, config)
    totals = results[0].trace["totals"]
    compared = sum(len(s["comparisons"]) for r in results for s in r.trace["steps"])
    assert totals["unparsed_verdicts"] == compared == len(QUESTIONS) * len(STAGES) * (N - 1)
    for r in results:
        for step in r.trace["steps"]:
            assert all(c["winner"] == c["pair"][1] for c in step["comparisons"] if c["by"] == "judge")


def test_swires_retraces_until_the_second_best_reasoning_passes(processor):
    """Captions and reasonings score by their text; reasonings only pass the cutoff from the second round on, so
    SWIRES retraces once and then writes conclusions for the best pooled reasonings."""
    rounds = {"captions": 0}

    def writer(prompt, copy):
        stage = current_stage(prompt)
        if stage == "CAPTION":
            rounds["captions"] += 1
        level = (rounds["captions"] - 1) // (2 * len(QUESTIONS))  # m = 2 captions per question per round
        return f"<{stage}> value={level * 10 + copy} </{stage}>"

    reward = lambda question, image, prefix, candidate: float(re.search(r"value=(\d+)", candidate).group(1))
    swires = lj.search.SwiresConfig(m=2, keep=1, rounds=3, z=1.0, reward_mean=5.0, reward_std=1.0, conclusions=2)
    config = lj.SearchConfig(method="swires", judge="reward", reward_fn=reward, swires=swires, max_stage_tokens=24)
    results = lj.search(ScriptedGenerator(processor, writer), processor, QUESTIONS, config)
    for r in results:
        final = r.trace["steps"][-1]
        assert len(final["rounds"]) == 2                                   # round 0 below 6.0, round 1 above
        assert final["rounds"][0]["second_best"] < 6
        assert final["rounds"][1]["second_best"] > 6
        assert len(final["conclusion_scores"]) == 2
        assert r.stages["REASONING"] == "value=11"                         # the best pooled reasoning
