"""Prediction files: our `predictions.jsonl` (one JSON object per line with `index` and `output`, the model's full
text) and VLMEvalKit's prediction files (xlsx or tsv with `index` and `prediction` columns)."""
from __future__ import annotations

import collections
from pathlib import Path

import pandas as pd

from llavao1_jax.json_lines import read_objects

JSONL_FIELDS = ("index", "output")


def _read_jsonl(path: Path) -> dict[str, str]:
    out = {}
    for line_number, record in read_objects(path, JSONL_FIELDS):
        key = str(record["index"])
        if key in out:
            raise ValueError(f"{path}: line {line_number} repeats index {record['index']!r}")
        out[key] = str(record["output"])
    return out


def _read_table(path: Path) -> dict[str, str]:
    try:
        table = pd.read_excel(path) if path.suffix == ".xlsx" else pd.read_csv(path, sep="\t")
    except ImportError as error:
        raise ValueError(f"{path}: reading xlsx needs openpyxl ({error})") from None
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise ValueError(f"{path}: cannot read the prediction table ({error})") from None
    missing = [c for c in ("index", "prediction") if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing} (columns present: {list(table.columns)})")
    keys = [str(i) for i in table["index"]]
    repeated = sorted(k for k, count in collections.Counter(keys).items() if count > 1)
    if repeated:
        raise ValueError(f"{path}: repeated index(es) {repeated[:5]}")
    # VLMEvalKit scores `str(prediction)`: an empty or NA cell reads as "nan".
    return dict(zip(keys, (str(p) for p in table["prediction"])))


def read_predictions(path: str | Path) -> dict[str, str]:
    """The model outputs in a prediction file, keyed by `str(index)`."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such prediction file")
    return _read_jsonl(path) if path.suffix == ".jsonl" else _read_table(path)
