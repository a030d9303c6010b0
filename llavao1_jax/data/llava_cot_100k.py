"""TFDS builder for a local copy of LLaVA-CoT-100k (`train.jsonl` + image folder), with record validation.

Every line of the jsonl is checked (`validate_line`); bad records are skipped and counted by reason (`ValidationReport`),
or stop the build with `InvalidRecordError` naming the file and line in strict mode. Kept records are written as ArrayRecord
with the image as its original encoded bytes, so they read back through `tfds.data_source` without TensorFlow:

    builder = LlavaCot100k(jsonl="train.jsonl", image_root="images/", data_dir="~/tfds", file_format="array_record")
    builder.download_and_prepare()
    source = tfds.data_source("llava_cot_100k", split="train", data_dir="~/tfds")
"""
import collections
import concurrent.futures
import dataclasses
import json
import os
from pathlib import Path

import tensorflow_datasets as tfds
import tqdm
from PIL import Image

from llavao1_jax.data import formats, records

IMAGE_PLACEHOLDER = "<image>"
_REQUIRED_FIELDS = (("id", (str, int)), ("image", str), ("conversations", list))


class InvalidRecord(formats.ReasonedError):
    """One jsonl line that cannot be used (the report counts skipped lines by `reason`)."""


class InvalidRecordError(RuntimeError):
    """Raised in strict mode at the first invalid record; the message starts with `file:line:`."""


@dataclasses.dataclass
class ValidationReport:
    """Counts of kept and skipped records, skips by reason, and the first few skipped records of each reason."""

    kept: int = 0
    skipped: int = 0
    by_reason: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: list = dataclasses.field(default_factory=list)
    examples_per_reason: int = 5

    def skip(self, line: int, error: InvalidRecord) -> None:
        """Count a skipped record; keep its line, reason and detail if it is among the first of its reason."""
        self.skipped += 1
        self.by_reason[error.reason] += 1
        if self.by_reason[error.reason] <= self.examples_per_reason:
            self.examples.append({"line": line, "reason": error.reason, "detail": error.detail})

    def to_dict(self) -> dict:
        """The JSON report: {"kept", "skipped", "by_reason", "examples"}."""
        return {"kept": self.kept, "skipped": self.skipped, "by_reason": dict(sorted(self.by_reason.items())),
                "examples": list(self.examples)}


def _check_conversation(conversations: list) -> list[dict]:
    """Validate the turns; return them with the image placeholder removed."""
    if not conversations:
        raise InvalidRecord("empty_conversation", "conversations is empty")
    for i, turn in enumerate(conversations):
        if not (isinstance(turn, dict) and isinstance(turn.get("from"), str) and isinstance(turn.get("value"), str)):
            raise InvalidRecord("bad_turn", f"turn {i} is not an object with string 'from' and 'value'")
    roles = [turn["from"] for turn in conversations]
    expected = [records.HUMAN, records.GPT] * (len(roles) // 2 + 1)
    if len(roles) % 2 or roles != expected[:len(roles)]:
        raise InvalidRecord("roles_not_alternating", f"roles {roles}; expected human, gpt, human, gpt, ...")
    counts = [turn["value"].count(IMAGE_PLACEHOLDER) for turn in conversations]
    if sum(counts) > 1 or sum(counts[1:]):
        raise InvalidRecord("bad_image_placeholder", f"{IMAGE_PLACEHOLDER} counts per turn {counts}; "
                                                     "at most one, in the first human turn")
    for i, turn in enumerate(conversations):
        if turn["from"] == records.GPT:
            try:
                formats.parse_stages(turn["value"])
            except formats.StageError as e:
                raise InvalidRecord(e.reason, f"turn {i}: {e.detail}") from None
    cleaned = [dict(turn) for turn in conversations]
    if counts[0]:
        cleaned[0]["value"] = cleaned[0]["value"].replace(IMAGE_PLACEHOLDER, "").strip()
    return cleaned


def _read_image(image_root: Path, relative: str) -> tuple[bytes, int, int]:
    """The image file's bytes and its (height, width), after checking that it decodes."""
    path = image_root / relative
    if not path.is_file():
        raise InvalidRecord("image_missing", f"no file {path}")
    try:
        with Image.open(path) as image:
            image.load()
            width, height = image.size
    except Exception as e:  # PIL raises many types for bad files (OSError, SyntaxError, ValueError, DecompressionBomb...)
        raise InvalidRecord("image_undecodable", f"{type(e).__name__}: {e}") from None
    return path.read_bytes(), height, width


def validate_line(raw: bytes, image_root: Path) -> dict | None:
    """Check one jsonl line and return the TFDS example for it; None for a blank line; raises `InvalidRecord`.

    Reasons: not_utf8, invalid_json, missing_field, bad_field_type, empty_conversation, bad_turn, roles_not_alternating,
    bad_image_placeholder, missing_tags, repeated_tags, tags_out_of_order, image_missing, image_undecodable.
    """
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidRecord("not_utf8", str(e)) from None
    if not line.strip():
        return None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise InvalidRecord("invalid_json", str(e)) from None
    if not isinstance(obj, dict):
        raise InvalidRecord("invalid_json", f"a line must hold a JSON object, not {type(obj).__name__}")
    for name, types in _REQUIRED_FIELDS:
        if name not in obj:
            raise InvalidRecord("missing_field", f"no field {name!r}")
        if not isinstance(obj[name], types) or isinstance(obj[name], bool):
            raise InvalidRecord("bad_field_type", f"field {name!r} has type {type(obj[name]).__name__}")
    conversations = _check_conversation(obj["conversations"])
    image, height, width = _read_image(image_root, obj["image"])
    parts = Path(obj["image"]).parts
    return {
        "id": str(obj["id"]),
        "image": image,
        "height": height,
        "width": width,
        "source": parts[0] if len(parts) > 1 else "",
        "image_path": obj["image"],
        "conversations": conversations,
    }


def _check_line(item: tuple[int, bytes], image_root: Path):
    """(line number, example or None or the `InvalidRecord`) for one numbered line."""
    lineno, raw = item
    try:
        return lineno, validate_line(raw, image_root)
    except InvalidRecord as e:
        return lineno, e


def _ordered_map(fn, items, num_workers: int, window: int):
    """`map(fn, items)` on a thread pool, in order, with at most `window` items in flight (bounded memory)."""
    with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
        pending = collections.deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class LlavaCot100k(tfds.core.GeneratorBasedBuilder):
    """LLaVA-CoT-100k from a local `train.jsonl` and image root (one "train" split).

    Features: id, image (encoded bytes), height, width, source (first component of the image path, e.g. "sqa", "chartqa",
    "CLEVR_v1.0", "vg"), image_path, conversations (from/value; gpt turns tagged). The validation report of the build is
    `builder.report` and is kept in the dataset's metadata (`builder.info.metadata["validation"]`).
    """

    name = "llava_cot_100k"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Validated records, images as encoded bytes."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = """Download LLaVA-CoT-100k (train.jsonl and the image zip parts), unzip the images, and
    either pass jsonl=/image_root= to the builder or put train.jsonl and the image folders in the manual dir."""

    def __init__(self, *, jsonl=None, image_root=None, strict: bool = False, num_workers: int = 8, **kwargs):
        """`jsonl`/`image_root` default to `<manual_dir>/train.jsonl` and `<manual_dir>`; `strict` fails on a bad record."""
        super().__init__(**kwargs)
        self._jsonl = Path(jsonl) if jsonl is not None else None
        self._image_root = Path(image_root) if image_root is not None else None
        self._strict = strict
        self._num_workers = num_workers
        self.report = ValidationReport()

    def _info(self) -> tfds.core.DatasetInfo:
        features = records.common_features()
        features["image_path"] = tfds.features.Text()
        return tfds.core.DatasetInfo(
            builder=self,
            description="LLaVA-CoT-100k: image QA with four-stage (summary, caption, reasoning, conclusion) answers.",
            features=tfds.features.FeaturesDict(features),
            homepage="https://github.com/PKU-YuanGroup/LLaVA-CoT",
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        jsonl = self._jsonl or dl_manager.manual_dir / "train.jsonl"
        image_root = self._image_root or dl_manager.manual_dir
        check_inputs(jsonl, image_root)
        return {"train": self._generate_examples(Path(jsonl), Path(image_root))}

    def _generate_examples(self, jsonl: Path, image_root: Path):
        self.report = ValidationReport()
        with jsonl.open("rb") as f:
            total = sum(1 for _ in f)
        with jsonl.open("rb") as f, tqdm.tqdm(total=total, desc=f"validating {jsonl.name}", unit=" lines") as bar:
            checked = _ordered_map(lambda item: _check_line(item, image_root), enumerate(f, start=1),
                                   self._num_workers, window=4 * self._num_workers)
            for lineno, result in checked:
                bar.update()
                if isinstance(result, InvalidRecord):
                    if self._strict:
                        raise InvalidRecordError(f"{jsonl}:{lineno}: {result.reason}: {result.detail}")
                    self.report.skip(lineno, result)
                    bar.set_postfix(kept=self.report.kept, skipped=self.report.skipped, refresh=False)
                elif result is not None:
                    self.report.kept += 1
                    yield lineno, result  # the line number is a unique key even if ids repeat
        if not self.report.kept:
            raise ValueError(f"{jsonl}: no valid records ({self.report.skipped} skipped: "
                             f"{dict(self.report.by_reason)})")
        self.info.metadata["validation"] = self.report.to_dict()


def check_inputs(jsonl, image_root) -> None:
    """Raise `FileNotFoundError` with a clear message when the jsonl file or the image root is missing."""
    if not os.path.isfile(jsonl):
        raise FileNotFoundError(f"LLaVA-CoT jsonl file not found: {jsonl}")
    if not os.path.isdir(image_root):
        raise FileNotFoundError(f"LLaVA-CoT image root is not a directory: {image_root}")
