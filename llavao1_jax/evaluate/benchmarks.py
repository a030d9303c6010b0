"""Readers for the VLMEvalKit benchmark TSVs of the paper's six benchmarks.

A file is read as VLMEvalKit reads it: pandas `read_csv(sep="\\t")` with pandas' default NA parsing, so an option
cell holding exactly `None`, `NA`, `N/A`, `null`, `nan` (or another pandas NA string) or nothing is missing and is
left out of the prompt and of scoring (`keep_none_options=True` keeps a literal `None` as an option text). Values
keep pandas' type inference too: an option column holding only numbers reads as numbers and prints as VLMEvalKit
prints them (a column of integers with a missing cell becomes floats, "3.0"). Indices are ints when every index is
one (HallusionBench's stay strings). Rows without an image are dropped and listed in `Benchmark.dropped`.

Images are kept as their base64 text (or path) and decoded only when `Row.image()` is called. An `image` value of 64
characters or fewer is the index of another row whose image it reuses (MMBench's circular copies); `"[...]"` is a
list of images. A file without an `image` column is read from its `image_path` column (relative to the TSV's
folder), as VLMEvalKit's meta-only datasets are; in a file with one, rows whose `image` is empty are dropped.
"""
from __future__ import annotations

import ast
import dataclasses
import string
from pathlib import Path

import pandas as pd

from llavao1_jax.evaluate import images

KINDS = ("mmstar", "mmbench", "ai2d", "hallusionbench", "mathvista", "mmvet", "synthetic_reasoning")
MC_KINDS = ("mmstar", "mmbench", "ai2d")  # scored by option letter
# VLMEvalKit dataset name prefixes (case-insensitive) and the kind each names; `synthetic_reasoning` is our own set
# (llavao1_jax.evaluate.synthetic).
_NAME_PREFIXES = (("mmbench", "mmbench"), ("mmstar", "mmstar"), ("ai2d", "ai2d"),
                  ("hallusionbench", "hallusionbench"), ("mathvista", "mathvista"), ("mmvet", "mmvet"),
                  ("synthetic_reasoning", "synthetic_reasoning"))
REQUIRED_COLUMNS = {
    "mmstar": ("index", "question", "answer", "category"),
    "mmbench": ("index", "question", "answer", "category"),
    "ai2d": ("index", "question", "answer", "category"),
    "hallusionbench": ("index", "question", "answer", "category", "l2-category"),
    "mathvista": ("index", "question", "answer", "question_type", "answer_type", "answer_option", "choices"),
    "mmvet": ("index", "question", "answer", "category"),
    "synthetic_reasoning": ("index", "question", "answer", "category"),
}
# Our own set is read as text throughout (no pandas type inference: an option "3" stays "3").
_TEXT_COLUMNS = {"synthetic_reasoning": ("question", "answer", "category", *string.ascii_uppercase[:4])}
# pandas' default NA strings (pandas >= 2); VLMEvalKit reads every TSV with them.
PANDAS_NA_STRINGS = ("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
                     "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null")
IMAGE_REFERENCE_MAX_CHARS = 64


@dataclasses.dataclass(frozen=True)
class Row:
    """One benchmark question. `options` maps each present letter to its text (MathVista: its `choices`);
    `fields` holds every other column of the row as read (e.g. MathVista's `answer_type`, `answer_option`)."""

    index: int | str
    question: str
    options: dict[str, str]
    answer: str
    category: str | None
    l2_category: str | None
    hint: str | None
    split: str | None
    fields: dict
    image_sources: tuple[tuple[str, str], ...]  # ("base64", text) or ("path", path), decoded lazily
    jpeg_round_trip: bool = False

    def images(self) -> list:
        """The row's images, decoded now (RGB PIL images)."""
        out = []
        for source, value in self.image_sources:
            try:
                out.append(images.decode_base64(value, self.jpeg_round_trip) if source == "base64"
                           else images.open_path(value, self.jpeg_round_trip))
            except ValueError as error:
                raise ValueError(f"row {self.index!r}, column 'image': {error}") from None
        return out

    def image(self):
        """The row's first image, decoded now (every benchmark here has one image per row)."""
        return self.images()[0]


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """The rows of one benchmark file, in file order."""

    name: str
    kind: str
    path: Path
    rows: tuple[Row, ...]
    dropped: tuple = ()  # indices of rows without an image

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]

    def __iter__(self):
        return iter(self.rows)

    def by_index(self) -> dict[str, Row]:
        """Rows keyed by `str(index)` (how prediction files are matched)."""
        return {str(row.index): row for row in self.rows}


def kind_from_name(name: str) -> str:
    """The benchmark kind a VLMEvalKit dataset name (e.g. `MMBench_DEV_EN_V11`) denotes."""
    lowered = name.lower()
    for prefix, kind in _NAME_PREFIXES:
        if lowered.startswith(prefix):
            return kind
    raise ValueError(f"unknown benchmark {name!r}: its name starts with none of the VLMEvalKit names "
                     f"MMStar, MMBench, AI2D, HallusionBench, MathVista, MMVet; pass kind= one of {KINDS}")


def _missing(value) -> bool:
    return bool(pd.isna(value))


def _text(value) -> str | None:
    return None if _missing(value) else str(value)


def read_table(path: str | Path, keep_none_options: bool = False, text_columns=()) -> pd.DataFrame:
    """A TSV read with VLMEvalKit's pandas semantics (a literal `None` kept when `keep_none_options`; the
    `text_columns` read as strings)."""
    na = dict(keep_default_na=False, na_values=[s for s in PANDAS_NA_STRINGS if s != "None"]) if keep_none_options \
        else {}
    try:
        return pd.read_csv(path, sep="\t", dtype=dict.fromkeys(text_columns, str), **na)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: cannot read as a TSV ({error})") from None


def _image_sources(where, value, image_path, by_index, folder) -> tuple[tuple[str, str], ...]:
    if value is None:
        return (("path", str(folder / image_path)),) if image_path else ()
    if len(value) <= IMAGE_REFERENCE_MAX_CHARS:
        target = by_index.get(value)
        if target is None:
            raise ValueError(f"{where}, column 'image': {value!r} refers to row index {value!r}, which is not in "
                             f"the file")
        if len(target) <= IMAGE_REFERENCE_MAX_CHARS:
            raise ValueError(f"{where}, column 'image': refers to row {value!r}, whose image is itself a reference")
        value = target
    if value.startswith("[") and value.endswith("]"):
        try:
            return tuple(("base64", str(v)) for v in ast.literal_eval(value))
        except (ValueError, SyntaxError):
            raise ValueError(f"{where}, column 'image': not a valid list of images") from None
    return (("base64", value),)


def read_benchmark(path: str | Path, name: str | None = None, kind: str | None = None,
                   keep_none_options: bool = False, jpeg_round_trip: bool = False) -> Benchmark:
    """Reads a VLMEvalKit benchmark TSV. The name defaults to the file's stem and the kind to the one that name
    denotes; `jpeg_round_trip` makes `Row.image()` return the paper-era JPEG re-encoded pixels."""
    path = Path(path)
    name = name or path.stem
    kind = kind or kind_from_name(name)
    if kind not in KINDS:
        raise ValueError(f"{path}: unknown benchmark kind {kind!r}; expected one of {KINDS}")
    table = read_table(path, keep_none_options, _TEXT_COLUMNS.get(kind, ()))
    missing = [c for c in REQUIRED_COLUMNS[kind] if c not in table.columns]
    if "image" not in table.columns and "image_path" not in table.columns:
        missing.append("image")
    if missing:
        raise ValueError(f"{path}: missing required column(s) {missing} for a {kind} benchmark "
                         f"(columns present: {list(table.columns)})")
    records = table.to_dict("records")
    integer_index = pd.api.types.is_integer_dtype(table["index"])
    by_index = {str(r["index"]): _text(r.get("image")) for r in records}
    rows, dropped = [], []
    for line, record in enumerate(records, start=2):
        index = int(record["index"]) if integer_index else str(record["index"])
        where = f"{path}: line {line} (index {index!r})"
        image_path = None if "image" in table.columns else _text(record.get("image_path"))
        sources = _image_sources(where, _text(record.get("image")), image_path, by_index, path.parent)
        if not sources:
            dropped.append(index)
            continue
        rows.append(Row(index=index, question=str(record["question"]), options=_options(where, kind, record),
                        answer=str(record["answer"]), category=_text(record.get("category")),
                        l2_category=_text(record.get("l2-category")), hint=_text(record.get("hint")),
                        split=_text(record.get("split")), fields=_other_fields(record), image_sources=sources,
                        jpeg_round_trip=jpeg_round_trip))
    return Benchmark(name=name, kind=kind, path=path, rows=tuple(rows), dropped=tuple(dropped))


def _options(where: str, kind: str, record: dict) -> dict[str, str]:
    if kind == "mathvista":
        if record["question_type"] != "multi_choice":
            return {}
        try:
            choices = ast.literal_eval(str(record["choices"]))
        except (ValueError, SyntaxError):
            raise ValueError(f"{where}, column 'choices': not a Python list: {record['choices']!r}") from None
        return {string.ascii_uppercase[i]: str(c) for i, c in enumerate(choices)}
    return {k: str(record[k]) for k in string.ascii_uppercase if k in record and not _missing(record[k])}


_MAIN_COLUMNS = {"index", "image", "question", "answer", "category", "l2-category", "hint", "split",
                 *string.ascii_uppercase}


def _other_fields(record: dict) -> dict:
    return {k: (None if _missing(v) else v) for k, v in record.items() if k not in _MAIN_COLUMNS}
