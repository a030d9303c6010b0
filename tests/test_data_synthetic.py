"""The synthetic reasoning dataset: answers follow from the drawn scene, and the question alone does not give them away."""
import collections
import io
import re

import numpy as np
import pytest
from PIL import Image

from llavao1_jax.data import formats, synthetic_reasoning as sr

N = 600
# The grid cell each position phrase of the questions names, row by row.
CELLS = {"at the top left": 0, "at the top": 1, "at the top right": 2, "on the left": 3, "in the center": 4,
         "on the right": 5, "at the bottom left": 6, "at the bottom": 7, "at the bottom right": 8}


def _members(noun: str, objects):
    """Objects named by a plural noun of the questions: "red shapes" or "circles"."""
    if noun.endswith(" shapes"):
        return [o for o in objects if o.color == noun[:-len(" shapes")]]
    return [o for o in objects if o.shape == noun[:-1]]


def _solve(problem) -> str:
    """Answer the question from the scene objects, independently of the generator's own reasoning."""
    q, objs = problem.question, problem.objects
    if m := re.match(r"How many (.+?) are there in the image\?", q):
        value = str(len(_members(m.group(1), objs)))
    elif m := re.match(r"Are there more (.+?) than (.+?)\?", q):
        return "Yes" if len(_members(m.group(1), objs)) > len(_members(m.group(2), objs)) else "No"
    elif m := re.match(r"If all the (.+?) were removed", q):
        return str(len(objs) - len(_members(m.group(1), objs)))
    elif m := re.match(r"How many (.+?) and (.+?) are there in total\?", q):
        return str(len(_members(m.group(1), objs)) + len(_members(m.group(2), objs)))
    elif m := re.match(r"What color is the (\w+)\?", q):
        (target,) = [o for o in objs if o.shape == m.group(1)]
        value = target.color
    elif m := re.match(r"What shape is the (\w+) object\?", q):
        (target,) = [o for o in objs if o.color == m.group(1)]
        value = target.shape
    elif m := re.match(r"What (color|shape) is (?:the shape )?(.+?)\?", q):
        (target,) = [o for o in objs if o.cell == CELLS[m.group(2)]]
        value = getattr(target, m.group(1))
    else:
        raise AssertionError(f"unexpected question {q!r}")
    if not problem.choices:
        return value
    return "ABCD"[problem.choices.index(value)]


@pytest.mark.parametrize("question_types", [sr.DEFAULT_QUESTION_TYPES, sr.QUESTION_TYPES, ("position_choice",)])
def test_answers_follow_from_the_scene(question_types):
    types = collections.Counter()
    for i in range(N):
        p = sr.make_problem(3, "train", i, question_types=question_types)
        types[p.question_type] += 1
        assert 1 <= len(p.objects) <= sr.MAX_OBJECTS
        assert len({o.cell for o in p.objects}) == len(p.objects)
        assert _solve(p) == p.answer, p
        assert formats.parse_stages(formats.render_answer(p.stages())).conclusion == p.answer
        if p.choices:
            assert "\nOptions:\nA. " in p.question and p.answer in "ABCD"[:len(p.choices)]
    assert set(types) == set(question_types) and min(types.values()) > N / len(question_types) / 2


@pytest.mark.parametrize("question_types", [sr.DEFAULT_QUESTION_TYPES, ("position_choice",)])
def test_text_only_guessing_is_at_chance(question_types):
    """The best guess from the question text alone (its most frequent answer in train) scores about chance on test."""
    by_question = collections.defaultdict(collections.Counter)
    for i in range(4000):
        p = sr.make_problem(0, "train", i, question_types=question_types)
        by_question[p.question][p.answer] += 1
    hits, chance = [], []
    for i in range(1500):
        p = sr.make_problem(0, "test", i, question_types=question_types)
        seen = by_question.get(p.question)
        hits.append(bool(seen) and seen.most_common(1)[0][0] == p.answer)
        n_answers = len(p.choices) or {"compare": 2}.get(p.question_type, sr.MAX_COUNT + 1)
        chance.append(1 / n_answers)
    assert np.mean(hits) < np.mean(chance) + 0.05, (np.mean(hits), np.mean(chance))


def test_deterministic_and_split_dependent():
    assert sr.make_example(5, "train", 7, 64) == sr.make_example(5, "train", 7, 64)
    assert sr.make_problem(5, "train", 7) != sr.make_problem(5, "test", 7)
    assert sr.make_problem(5, "train", 7) != sr.make_problem(6, "train", 7)


@pytest.mark.parametrize("size,background", [(56, "light"), (112, "light"), (84, "mean")])
def test_image_shows_the_objects(size, background):
    for i in range(20):
        p = sr.make_problem(1, "train", i)
        example = sr.make_example(1, "train", i, size, background=background)
        image = np.asarray(Image.open(io.BytesIO(example["image"])))
        assert image.shape == (size, size, 3)
        cell = size / sr.GRID
        colors = {o.cell: sr.COLORS[o.color] for o in p.objects}
        for c in range(sr.GRID * sr.GRID):
            y, x = int((c // sr.GRID + 0.6) * cell), int((c % sr.GRID + 0.5) * cell)  # a bit below the centre: inside triangles
            assert tuple(image[y, x]) == colors.get(c, sr.BACKGROUNDS[background])


def test_example_fields():
    example = sr.make_example(0, "test", 3, 112)
    p = sr.make_problem(0, "test", 3)
    assert example["id"] == "test-0000003"
    assert [t["from"] for t in example["conversations"]] == ["human", "gpt"]
    assert example["conversations"][0]["value"] == p.question
    stages = formats.parse_stages(example["conversations"][1]["value"])
    assert stages.conclusion == example["answer"] == p.answer
    assert stages.caption == example["caption"] and stages.summary == example["summary"]
    assert stages.reasoning == " ".join(example["reasoning"])


def test_image_size_and_background_are_checked():
    with pytest.raises(ValueError, match="image_size"):
        sr.SyntheticReasoning(image_size=8)
    with pytest.raises(ValueError, match="background must be one of"):
        sr.SyntheticReasoning(background="white")
    with pytest.raises(ValueError, match="unknown background 'white'"):
        sr.draw_scene((), 56, "white")


def test_grid_caption_names_every_cell_in_place():
    objects = (sr.Shape("circle", "red", 0), sr.Shape("square", "blue", 4), sr.Shape("triangle", "green", 8))
    assert sr.scene_caption(objects, "grid") == ("Top row: a red circle, nothing, nothing. Middle row: nothing, a blue "
                                                 "square, nothing. Bottom row: nothing, nothing, a green triangle.")
    problem = sr.make_problem(2, "train", 5, "grid")
    plain = sr.make_problem(2, "train", 5)
    assert problem.objects == plain.objects and problem.reasoning == plain.reasoning  # only the caption differs
    assert problem.caption == sr.scene_caption(plain.objects, "grid") != plain.caption
    with pytest.raises(ValueError, match="unknown caption style 'rows'"):
        sr.scene_caption(objects, "rows")


def test_cells_caption_names_each_cell_before_its_content():
    objects = (sr.Shape("circle", "red", 0), sr.Shape("square", "blue", 4), sr.Shape("triangle", "green", 8))
    assert sr.scene_caption(objects, "cells") == (
        "Top left: a red circle. Top: nothing. Top right: nothing. Left: nothing. Center: a blue square. "
        "Right: nothing. Bottom left: nothing. Bottom: nothing. Bottom right: a green triangle.")


def test_numbered_caption_numbers_every_cell_in_reading_order():
    objects = (sr.Shape("circle", "red", 0), sr.Shape("square", "blue", 4), sr.Shape("triangle", "green", 8))
    assert sr.scene_caption(objects, "numbered") == (
        "Cells: 1 red circle, 2 nothing, 3 nothing, 4 nothing, 5 blue square, 6 nothing, 7 nothing, 8 nothing, "
        "9 green triangle.")


def test_position_question_reasons_from_the_named_cell():
    p = next(p for i in range(50) if (p := sr.make_problem(4, "test", i, "numbered", ("position_choice",))).question
             .startswith("What shape"))
    (phrase,) = re.match(r"What shape is (.+?)\?", p.question).groups()
    (target,) = [o for o in p.objects if o.cell == CELLS[phrase]]
    assert p.choices == sr.SHAPES and p.answer == "ABC"[sr.SHAPES.index(target.shape)]
    assert p.reasoning[0] == (f"The cell {phrase} is cell {CELLS[phrase] + 1}, which holds a {target.color} "
                              f"{target.shape}.")


@pytest.mark.parametrize("question_types", [(), ("count", "count"), ("count", "colour")])
def test_question_types_are_checked(question_types):
    with pytest.raises(ValueError, match="question_types must be distinct names"):
        sr.make_problem(0, "train", 0, question_types=question_types)
    with pytest.raises(ValueError, match="question_types must be distinct names"):
        sr.SyntheticReasoning(question_types=question_types)
