"""Judge records for the synthetic set: one stage of a problem's worked answer next to a wrong version of it, laid
out exactly as the stage-level search's self-judge sees the pair, answered "Since <reason>, I choose response k."
with k naming the correct one.

The wrong versions come from what the problem knows about itself:

- SUMMARY: the summary of a problem of another question type;
- CAPTION: the scene's caption with one object's colour or shape changed;
- REASONING and CONCLUSION: those of a *twin*, a problem with the same question but another answer (another scene),
  so the wrong reasoning counts the wrong shapes and reaches the wrong answer.

The judge sees what the search shows it: the question, no hint for the summary and caption, the correct caption for
the reasoning, the correct caption and reasoning for the conclusion; each stage as the search's candidates hold it (its
tags and the blank line after it, `formats.tagged_pieces`). Judge record j of the train split takes the problem of
question record j mod num_train, the stage j mod 4, and puts the correct stage first when (j // 4) is even, so
stages and orders are equally frequent.
"""
import dataclasses

import numpy as np

from llavao1_jax.data import formats, records, synthetic_reasoning as sr
from llavao1_jax.search.prompts import judge_parts

STAGES = formats.STAGE_NAMES
TWIN_DRAWS = 10_000
# What each question type asks, for the reason of a summary verdict.
ASKS = {"count": "asks how many shapes of one kind there are",
        "count_choice": "asks how many shapes of one kind there are and offers options",
        "compare": "asks whether there are more shapes of one kind than of another",
        "arithmetic": "asks for a number of shapes after adding or removing some",
        "attribute_choice": "asks for the color or the shape of one object and offers options",
        "position_choice": "asks for the color or the shape of the object in one cell and offers options"}


@dataclasses.dataclass(frozen=True)
class WrongStage:
    """A wrong version of one stage of a problem: its text (inside the tags) and why the correct one is better."""

    stage: str
    text: str
    reason: str


def twin(problem: sr.Problem, rng) -> sr.Problem:
    """A problem with the same question as `problem` and another answer, drawn with `rng`."""
    for _ in range(TWIN_DRAWS):
        other = sr.draw_problem(rng, problem.question_type)
        if other.question == problem.question and other.answer != problem.answer:
            return other
    raise RuntimeError(f"no problem with the question {problem.question!r} and another answer in {TWIN_DRAWS} draws")


def _changed_caption(problem: sr.Problem, rng, caption_style: str) -> WrongStage:
    objects = list(problem.objects)
    index = int(rng.integers(len(objects)))
    obj = objects[index]
    if rng.integers(2):
        color = str(rng.choice([c for c in sr.COLORS if c != obj.color]))
        objects[index] = dataclasses.replace(obj, color=color)
        reason = f"the {obj.shape} {obj.position} is {obj.color}, not {color}"
    else:
        shape = str(rng.choice([s for s in sr.SHAPES if s != obj.shape]))
        objects[index] = dataclasses.replace(obj, shape=shape)
        reason = f"the {obj.color} shape {obj.position} is a {obj.shape}, not a {shape}"
    return WrongStage("CAPTION", sr.scene_caption(objects, caption_style), reason)


def _answer_phrase(problem: sr.Problem, answer: str) -> str:
    return f"option {answer}" if problem.choices else answer


def wrong_stage(problem: sr.Problem, stage: str, rng, caption_style: str = "objects") -> WrongStage:
    """A wrong version of `stage` of `problem` (see the module docstring), drawn with `rng`; a wrong caption is
    written in `caption_style`."""
    if stage == "SUMMARY":
        other_type = str(rng.choice([t for t in sr.QUESTION_TYPES if t != problem.question_type]))
        return WrongStage(stage, sr.draw_problem(rng, other_type).summary,
                          f"the question {ASKS[problem.question_type]}")
    if stage == "CAPTION":
        return _changed_caption(problem, rng, caption_style)
    other = twin(problem, rng)
    right, wrong = _answer_phrase(problem, problem.answer), _answer_phrase(problem, other.answer)
    if stage == "REASONING":
        return WrongStage(stage, " ".join(other.reasoning), f"the shapes in the image lead to {right}, not {wrong}")
    return WrongStage(stage, other.answer, f"the reasoning in the hint reaches {right}, not {wrong}")


def judge_turns(problem: sr.Problem, wrong: WrongStage, correct_response: int) -> tuple[tuple[str, ...], str]:
    """The judge prompt's user-turn pieces (`search.prompts.judge_parts`) with the correct stage as response
    `correct_response` (1 or 2) and `wrong` as the other, and the verdict."""
    stages = problem.stages()
    correct = formats.tagged_pieces(stages)
    field = wrong.stage.lower()
    wrong_piece = formats.tagged_pieces(dataclasses.replace(stages, **{field: wrong.text}))[STAGES.index(wrong.stage)]
    mine = correct[STAGES.index(wrong.stage)]
    first, second = (mine, wrong_piece) if correct_response == 1 else (wrong_piece, mine)
    hint = {"REASONING": correct[1:2], "CONCLUSION": correct[1:3]}.get(wrong.stage, ())
    parts = judge_parts(wrong.stage, problem.question, first, second, hint)
    return parts, f"Since {wrong.reason}, I choose response {correct_response}."


def judge_example(seed: int, index: int, num_train: int, image_size: int, caption_style: str = "objects",
                  background: str = "light", question_types: tuple[str, ...] = sr.DEFAULT_QUESTION_TYPES) -> dict:
    """Record `index` (>= num_train) of the train split: judge record j = index - num_train (see the module
    docstring); a pure function of its arguments."""
    j = index - num_train
    if j < 0:
        raise ValueError(f"judge records start at index {num_train}, got {index}")
    source = j % num_train
    example = sr.make_example(seed, "train", source, image_size, caption_style, background, question_types)
    problem = sr.make_problem(seed, "train", source, caption_style, question_types)
    stage = STAGES[j % len(STAGES)]
    rng = np.random.default_rng([seed, sr.SPLITS.index("train"), index, 1])
    parts, verdict = judge_turns(problem, wrong_stage(problem, stage, rng, caption_style),
                                 1 + (j // len(STAGES)) % 2)
    example.update(id=f"train-{index:07d}", task=f"judge_{stage.lower()}", prompt_parts=list(parts),
                   conversations=[{"from": records.HUMAN, "value": "".join(parts)},
                                  {"from": records.GPT, "value": verdict}])
    return example
