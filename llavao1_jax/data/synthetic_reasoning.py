"""A synthetic visual-reasoning dataset the project draws itself: coloured shapes on a 3x3 grid, questions about them.

Every image shows 1 to 6 shapes (circle, square, triangle; red, green, blue, yellow), one per grid cell, so each shape has a
nameable position ("at the top left", "in the center", ...). Question types (`QUESTION_TYPES`, drawn uniformly):

- count: "How many red shapes are there?" (open, answer 0-4)
- count_choice: the same with four numeric options (multiple choice, answer a letter)
- compare: "Are there more circles than squares?" (open, Yes/No)
- arithmetic: "If all the triangles were removed, how many shapes would be left?" or "How many red and blue shapes are
  there in total?" (open, answer 0-4)
- attribute_choice: "What color is the square?" / "What shape is the green object?" (multiple choice)
- position_choice: "What color is the shape at the top left?" / "What shape is at the top left?" (multiple choice;
  not among the default types, `DEFAULT_QUESTION_TYPES`: a build chooses its mix with `question_types`)

The answer is drawn first (uniformly, with uniformly placed correct options) and the scene is built to match it, so the
question text says nothing about the answer: a text-only model is at chance. Each record keeps the plain answer and the
pieces of its reasoning (summary, caption, reasoning steps) besides the tagged conversation, so the same data can be
rendered in every format of `formats.FORMATS`. With `judge_fraction` > 0 the train split also holds judge records
(`judge_samples`) after its questions. Records are a pure function of (seed, split, index) and the build parameters.
"""
import dataclasses
import io

import numpy as np
import tensorflow_datasets as tfds
import tqdm
from PIL import Image, ImageDraw

from llavao1_jax.data import formats, records

COLORS = {"red": (215, 40, 40), "green": (30, 160, 60), "blue": (40, 80, 220), "yellow": (230, 190, 20)}
SHAPES = ("circle", "square", "triangle")
QUESTION_TYPES = ("count", "count_choice", "compare", "arithmetic", "attribute_choice", "position_choice")
DEFAULT_QUESTION_TYPES = QUESTION_TYPES[:5]
CAPTION_STYLES = ("objects", "grid", "cells", "numbered")
SPLITS = ("train", "test")
# "light": light gray; "mean": the image processor's normalisation mean (CLIP's), which normalises to zero, so an
# empty cell's patch carries no pixel signal at all and a shape's patch is its shape and colour alone
BACKGROUNDS = {"light": (235, 235, 235), "mean": (123, 117, 104)}
GRID = 3
MAX_OBJECTS = 6
MAX_COUNT = 4
LETTERS = "ABCD"
_POSITIONS = ("at the top left", "at the top", "at the top right", "on the left", "in the center", "on the right",
              "at the bottom left", "at the bottom", "at the bottom right")
_CELL_NAMES = ("Top left", "Top", "Top right", "Left", "Center", "Right", "Bottom left", "Bottom", "Bottom right")
_OPEN_SUFFIX = "Answer with a single word or number."


@dataclasses.dataclass(frozen=True)
class Shape:
    """One drawn object: its shape, colour and grid cell (row-major index 0-8)."""

    shape: str
    color: str
    cell: int

    @property
    def position(self) -> str:
        """E.g. "at the top left"."""
        return _POSITIONS[self.cell]

    def describe(self) -> str:
        """E.g. "the red circle at the top left"."""
        return f"the {self.color} {self.shape} {self.position}"


@dataclasses.dataclass(frozen=True)
class Category:
    """A set of shapes named by one attribute: kind "color" (value "red": red shapes) or "shape" (value "circle")."""

    kind: str
    value: str

    def matches(self, obj: Shape) -> bool:
        """Whether `obj` belongs to the category."""
        return getattr(obj, self.kind) == self.value

    @property
    def singular(self) -> str:
        return f"{self.value} shape" if self.kind == "color" else self.value

    @property
    def plural(self) -> str:
        return self.singular + "s"


@dataclasses.dataclass(frozen=True)
class Problem:
    """A scene with its question and worked answer."""

    question_type: str
    objects: tuple[Shape, ...]
    question: str  # as shown to the model, options included
    choices: tuple[str, ...]  # option texts in letter order; empty for open questions
    answer: str  # the conclusion: a number, Yes/No, or an option letter
    summary: str
    caption: str
    reasoning: tuple[str, ...]

    def stages(self) -> formats.Stages:
        """The four stages of the worked answer."""
        return formats.Stages(self.summary, self.caption, " ".join(self.reasoning), self.answer)


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _listing(category: Category, objects) -> str:
    """A reasoning sentence enumerating the objects of `category`."""
    found = [obj.describe() for obj in objects if category.matches(obj)]
    if not found:
        return f"There are no {category.plural}."
    if len(found) == 1:
        return f"There is 1 {category.singular}: {found[0]}."
    return f"There are {len(found)} {category.plural}: {_join(found)}."


def scene_caption(objects, style: str = "objects") -> str:
    """The caption stage of a scene: every object in grid order (`style` "objects"); every cell of the grid, row by
    row, empty ones as "nothing" ("grid": each cell has a fixed place in the text, the same one in every caption, so
    a small model learns to read the image far sooner); the same with each cell named before its content
    ("cells": "Top left: a red circle. Top: nothing. ...", so the words just before a cell's content say which
    cell it is); or with each cell numbered in reading order ("numbered": "Cells: 1 red circle, 2 nothing, ...":
    the token just before a cell's content is its own number, a different one for every cell)."""
    if style == "numbered":
        cells = {obj.cell: f"{obj.color} {obj.shape}" for obj in objects}
        return "Cells: " + ", ".join(f"{cell + 1} {cells.get(cell, 'nothing')}" for cell in range(GRID * GRID)) + "."
    cells = {obj.cell: f"a {obj.color} {obj.shape}" for obj in objects}
    if style == "cells":
        return " ".join(f"{name}: {cells.get(cell, 'nothing')}." for cell, name in enumerate(_CELL_NAMES))
    if style == "grid":
        rows = [", ".join(cells.get(row * GRID + column, "nothing") for column in range(GRID))
                for row in range(GRID)]
        return " ".join(f"{name} row: {items}." for name, items in zip(("Top", "Middle", "Bottom"), rows))
    if style != "objects":
        raise ValueError(f"unknown caption style {style!r}; expected one of {CAPTION_STYLES}")
    ordered = sorted(objects, key=lambda obj: obj.cell)
    noun = "shape" if len(ordered) == 1 else "shapes"
    described = [obj.describe().replace("the ", "a ", 1) for obj in ordered]
    return f"The image shows {len(ordered)} {noun} on a gray background: {_join(described)}."


def _random_category(rng, kind: str | None = None) -> Category:
    kind = kind or str(rng.choice(["color", "shape"]))
    return Category(kind, str(rng.choice(list(COLORS) if kind == "color" else SHAPES)))


def _two_categories(rng) -> tuple[Category, Category]:
    """Two different categories of the same kind (two colours or two shapes), so no object is in both."""
    kind = str(rng.choice(["color", "shape"]))
    first = _random_category(rng, kind)
    second = _random_category(rng, kind)
    while second == first:
        second = _random_category(rng, kind)
    return first, second


def _random_object(rng, exclude: tuple[Category, ...] = ()) -> tuple[str, str]:
    """A (shape, color) pair that belongs to none of `exclude`."""
    while True:
        obj = Shape(str(rng.choice(SHAPES)), str(rng.choice(list(COLORS))), 0)
        if not any(category.matches(obj) for category in exclude):
            return obj.shape, obj.color


def _member(rng, category: Category, exclude: tuple[Category, ...] = ()) -> tuple[str, str]:
    """A (shape, color) pair in `category` and in none of `exclude`."""
    while True:
        shape = category.value if category.kind == "shape" else str(rng.choice(SHAPES))
        color = category.value if category.kind == "color" else str(rng.choice(list(COLORS)))
        if not any(other.matches(Shape(shape, color, 0)) for other in exclude):
            return shape, color


def _place(rng, pairs: list[tuple[str, str]]) -> tuple[Shape, ...]:
    """Put the (shape, color) pairs into distinct random grid cells."""
    cells = rng.permutation(GRID * GRID)[:len(pairs)]
    return tuple(Shape(shape, color, int(cell)) for (shape, color), cell in zip(pairs, cells))


def _scene(rng, counts: dict[Category, int], min_total: int = 1) -> tuple[Shape, ...]:
    """Objects with exactly `counts[c]` members of each category (categories disjoint), plus distractors outside them."""
    categories = tuple(counts)
    pairs = [_member(rng, c, tuple(o for o in categories if o != c)) for c in categories for _ in range(counts[c])]
    extra = int(rng.integers(max(0, min_total - len(pairs)), MAX_OBJECTS - len(pairs) + 1))
    pairs += [_random_object(rng, categories) for _ in range(extra)]
    return _place(rng, pairs)


def _options(rng, correct: str, pool: list[str]) -> tuple[tuple[str, ...], str]:
    """Four (or len(pool)) options from `pool` including `correct`, in pool order; returns (options, correct letter)."""
    others = [x for x in pool if x != correct]
    picked = set(rng.choice(others, size=min(len(LETTERS), len(pool)) - 1, replace=False).tolist()) | {correct}
    options = tuple(x for x in pool if x in picked)
    return options, LETTERS[options.index(correct)]


def _with_options(question: str, options: tuple[str, ...]) -> str:
    return question + "\nOptions:\n" + "\n".join(f"{LETTERS[i]}. {option}" for i, option in enumerate(options))


def _count(rng, multiple_choice: bool):
    category = _random_category(rng)
    k = int(rng.integers(0, MAX_COUNT + 1))
    objects = _scene(rng, {category: k})
    question = f"How many {category.plural} are there in the image?"
    if not multiple_choice:
        return (objects, f"{question} {_OPEN_SUFFIX}", (), str(k),
                f"I will find the {category.plural} in the image and count them.",
                (_listing(category, objects), f"Counting them gives {k}."))
    # Options: 4 of the 5 possible counts. Given the options, each is equally likely to be correct.
    options, letter = _options(rng, str(k), [str(i) for i in range(MAX_COUNT + 1)])
    return (objects, _with_options(question, options), options, letter,
            f"I will count the {category.plural} in the image and pick the option with that number.",
            (_listing(category, objects), f"Counting them gives {k}, which is option {letter}."))


def _compare(rng):
    first, second = _two_categories(rng)
    more = bool(rng.integers(2))
    pairs = [(a, b) for a in range(MAX_COUNT + 1) for b in range(MAX_COUNT + 1) if a + b <= 5 and (a > b) == more]
    a, b = pairs[int(rng.integers(len(pairs)))]
    objects = _scene(rng, {first: a, second: b})
    relation = "more than" if a > b else "equal to" if a == b else "less than"
    verdict = "there are" if more else "there are not"
    return (objects, f"Are there more {first.plural} than {second.plural}? Answer Yes or No.", (),
            "Yes" if more else "No",
            f"I will count the {first.plural} and the {second.plural} and compare the two numbers.",
            (_listing(first, objects), _listing(second, objects),
             f"{a} is {relation} {b}, so {verdict} more {first.plural} than {second.plural}."))


def _arithmetic(rng):
    result = int(rng.integers(0, MAX_COUNT + 1))
    if rng.integers(2):  # removal: total - members
        category = _random_category(rng)
        removed = int(rng.integers(1, 3))
        objects = _place(rng, [_member(rng, category) for _ in range(removed)] +
                         [_random_object(rng, (category,)) for _ in range(result)])
        return (objects, f"If all the {category.plural} were removed, how many shapes would be left? {_OPEN_SUFFIX}",
                (), str(result),
                f"I will count all the shapes and the {category.plural}, then subtract.",
                (f"There are {len(objects)} shapes in total.", _listing(category, objects),
                 f"{len(objects)} - {removed} = {result}."))
    first, second = _two_categories(rng)
    a = int(rng.integers(0, result + 1))
    objects = _scene(rng, {first: a, second: result - a})
    return (objects, f"How many {first.plural} and {second.plural} are there in total? {_OPEN_SUFFIX}", (),
            str(result), f"I will count the {first.plural} and the {second.plural} and add the two numbers.",
            (_listing(first, objects), _listing(second, objects), f"{a} + {result - a} = {result}."))


def _attribute_choice(rng):
    asked = "color" if rng.integers(2) else "shape"  # the attribute asked about
    known = "shape" if asked == "color" else "color"  # the unique object is named by the other attribute
    target = _random_category(rng, known)
    value = str(rng.choice(list(COLORS) if asked == "color" else SHAPES))
    pair = (value, target.value) if asked == "shape" else (target.value, value)
    objects = _place(rng, [pair] + [_random_object(rng, (target,)) for _ in range(int(rng.integers(0, MAX_OBJECTS)))])
    options, letter = _options(rng, value, list(COLORS) if asked == "color" else list(SHAPES))
    obj = next(o for o in objects if target.matches(o))
    name = target.value if known == "shape" else f"{target.value} object"
    return (objects, _with_options(f"What {asked} is the {name}?", options), options, letter,
            f"I will find the {name} in the image, note its {asked} and match it to the options.",
            (f"There is 1 {target.singular}: {obj.describe()}.", f"Its {asked} is {value}, which is option {letter}."))


def _position_choice(rng):
    asked = "color" if rng.integers(2) else "shape"
    value = str(rng.choice(list(COLORS) if asked == "color" else SHAPES))
    pair = (str(rng.choice(SHAPES)), value) if asked == "color" else (value, str(rng.choice(list(COLORS))))
    objects = _place(rng, [pair] + [_random_object(rng) for _ in range(int(rng.integers(0, MAX_OBJECTS)))])
    target = objects[0]
    options, letter = _options(rng, value, list(COLORS) if asked == "color" else list(SHAPES))
    question = (f"What color is the shape {target.position}?" if asked == "color"
                else f"What shape is {target.position}?")
    return (objects, _with_options(question, options), options, letter,
            f"I will look at the cell {target.position}, note the {asked} of its shape and match it to the options.",
            (f"The cell {target.position} is cell {target.cell + 1}, which holds a {target.color} {target.shape}.",
             f"Its {asked} is {value}, which is option {letter}."))


def make_problem(seed: int, split: str, index: int, caption_style: str = "objects",
                 question_types: tuple[str, ...] = DEFAULT_QUESTION_TYPES) -> Problem:
    """The `index`-th problem of `split` for `seed`, its type drawn uniformly from `question_types`
    (deterministic, independent of other indices)."""
    check_question_types(question_types)
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    return draw_problem(rng, question_types[int(rng.integers(len(question_types)))], caption_style)


def check_question_types(question_types) -> None:
    """Raise `ValueError` unless `question_types` is a non-empty sequence of distinct names of `QUESTION_TYPES`."""
    unknown = [t for t in question_types if t not in QUESTION_TYPES]
    if not question_types or unknown or len(set(question_types)) != len(question_types):
        raise ValueError(f"question_types must be distinct names out of {QUESTION_TYPES}, got {tuple(question_types)}")


def draw_problem(rng, question_type: str, caption_style: str = "objects") -> Problem:
    """A problem of `question_type` drawn with `rng`, its caption in `caption_style` (see `scene_caption`)."""
    if question_type in ("count", "count_choice"):
        parts = _count(rng, multiple_choice=question_type == "count_choice")
    else:
        parts = {"compare": _compare, "arithmetic": _arithmetic, "attribute_choice": _attribute_choice,
                 "position_choice": _position_choice}[question_type](rng)
    objects, question, choices, answer, summary, reasoning = parts
    return Problem(question_type, objects, question, choices, answer, summary, scene_caption(objects, caption_style),
                   reasoning)


def draw_scene(objects, image_size: int, background: str = "light") -> Image.Image:
    """Draw the objects on an `image_size` x `image_size` RGB image of colour `BACKGROUNDS[background]` (shapes
    about a fifth of the side)."""
    if background not in BACKGROUNDS:
        raise ValueError(f"unknown background {background!r}; expected one of {tuple(BACKGROUNDS)}")
    image = Image.new("RGB", (image_size, image_size), BACKGROUNDS[background])
    draw = ImageDraw.Draw(image)
    cell = image_size / GRID
    radius = 0.3 * cell
    for obj in objects:
        cy, cx = (obj.cell // GRID + 0.5) * cell, (obj.cell % GRID + 0.5) * cell
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        color = COLORS[obj.color]
        if obj.shape == "circle":
            draw.ellipse(box, fill=color)
        elif obj.shape == "square":
            draw.rectangle(box, fill=color)
        else:
            draw.polygon([(cx, cy - radius), (cx + radius, cy + radius), (cx - radius, cy + radius)], fill=color)
    return image


def make_example(seed: int, split: str, index: int, image_size: int, caption_style: str = "objects",
                 background: str = "light", question_types: tuple[str, ...] = DEFAULT_QUESTION_TYPES) -> dict:
    """The TFDS example (feature dict) of one problem, image encoded as PNG."""
    problem = make_problem(seed, split, index, caption_style, question_types)
    png = io.BytesIO()
    draw_scene(problem.objects, image_size, background).save(png, format="PNG")
    return {
        "id": f"{split}-{index:07d}",
        "image": png.getvalue(),
        "height": image_size,
        "width": image_size,
        "source": SyntheticReasoning.name,
        "conversations": [{"from": records.HUMAN, "value": problem.question},
                          {"from": records.GPT, "value": formats.render_answer(problem.stages(), "tagged")}],
        "question_type": problem.question_type,
        "choices": list(problem.choices),
        "answer": problem.answer,
        "summary": problem.summary,
        "caption": problem.caption,
        "reasoning": list(problem.reasoning),
        "task": "answer",
        "prompt_parts": [],
    }


class SyntheticReasoning(tfds.core.GeneratorBasedBuilder):
    """The synthetic shapes dataset, "train" and "test" splits of any size.

    Build parameters are stored in `info.metadata["params"]`; `judge_fraction` adds round(judge_fraction *
    num_train) judge records to the train split, after its num_train questions; `question_types` is the mix each
    question's type is drawn from, uniformly. Features: those of
    `records.common_features` plus question_type, choices, answer (the conclusion), summary, caption, reasoning (list
    of steps) of the problem, task ("answer", or "judge_<stage>" for a judge record) and prompt_parts (a judge
    record's user turn in the pieces the search tokenises one by one; empty for questions).
    """

    name = "synthetic_reasoning"
    VERSION = tfds.core.Version("1.4.0")
    RELEASE_NOTES = {"1.0.0": "Shapes on a 3x3 grid; count, compare, arithmetic and attribute questions.",
                     "1.1.0": "Optional judge records in the train split (judge_fraction); task, prompt_parts.",
                     "1.2.0": "Optional grid captions (caption_style).",
                     "1.3.0": "Optional cell captions (caption_style) and image background (background).",
                     "1.4.0": "Optional numbered captions, position questions and question mix (question_types)."}

    def __init__(self, *, num_train: int = 2000, num_test: int = 200, seed: int = 0, image_size: int = 112,
                 judge_fraction: float = 0.0, caption_style: str = "objects", background: str = "light",
                 question_types: tuple[str, ...] = DEFAULT_QUESTION_TYPES, **kwargs):
        """The parameters only matter when the dataset is generated (reading back takes them from the metadata)."""
        if image_size < 24:
            raise ValueError(f"image_size must be at least 24 pixels, got {image_size}")
        if judge_fraction < 0:
            raise ValueError(f"judge_fraction must be >= 0, got {judge_fraction}")
        if caption_style not in CAPTION_STYLES:
            raise ValueError(f"caption_style must be one of {CAPTION_STYLES}, got {caption_style!r}")
        if background not in BACKGROUNDS:
            raise ValueError(f"background must be one of {tuple(BACKGROUNDS)}, got {background!r}")
        check_question_types(question_types)
        if judge_fraction and num_train < 1:
            raise ValueError("judge_fraction > 0 needs num_train >= 1 (judge records are built from the questions)")
        self.params = {"num_train": num_train, "num_test": num_test, "seed": seed, "image_size": image_size,
                       "judge_fraction": float(judge_fraction), "caption_style": caption_style,
                       "background": background, "question_types": list(question_types)}
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        features = records.common_features()
        features.update({
            "question_type": tfds.features.Text(),
            "choices": tfds.features.Sequence(tfds.features.Text()),
            "answer": tfds.features.Text(),
            "summary": tfds.features.Text(),
            "caption": tfds.features.Text(),
            "reasoning": tfds.features.Sequence(tfds.features.Text()),
            "task": tfds.features.Text(),
            "prompt_parts": tfds.features.Sequence(tfds.features.Text()),
        })
        return tfds.core.DatasetInfo(
            builder=self,
            description="Coloured shapes on a grid with counting, comparison and arithmetic questions, four-stage answers.",
            features=tfds.features.FeaturesDict(features),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        self.info.metadata["params"] = dict(self.params)
        return {split: self._generate_examples(split) for split in SPLITS}

    def _generate_examples(self, split: str):
        from llavao1_jax.data import judge_samples  # it builds on this module

        seed, size, questions = self.params["seed"], self.params["image_size"], self.params[f"num_{split}"]
        look = self.params["caption_style"], self.params["background"], tuple(self.params["question_types"])
        judges = round(self.params["judge_fraction"] * questions) if split == "train" else 0
        for index in tqdm.trange(questions + judges, desc=f"drawing {split}", unit=" records"):
            if index < questions:
                yield index, make_example(seed, split, index, size, *look)
            else:
                yield index, judge_samples.judge_example(seed, index, questions, size, *look)
