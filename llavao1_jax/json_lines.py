"""Reading JSON-lines files with errors that name the file and line."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence


def read_objects(path: Path, required: Sequence[str] = ()) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line of `path`. Raises ValueError naming the file and line for a
    line that is not a JSON object or lacks one of the `required` fields."""
    out = []
    for line_number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: line {line_number} is not JSON ({error})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}: line {line_number} is not a JSON object")
        missing = [f for f in required if f not in record]
        if missing:
            raise ValueError(f"{path}: line {line_number} lacks field(s) {missing}")
        out.append((line_number, record))
    return out
