"""Helpers for the ml_collections configs in configs/ (big_vision style `get_config(arg)`)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import ml_collections


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """Parses a config argument 'key=value,key=value' over `defaults`; values take the type of their default."""
    out = ml_collections.ConfigDict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in defaults:
            raise ValueError(f"bad config argument {item!r}: expected key=value with key in {sorted(defaults)}")
        kind = type(defaults[key])
        out[key] = (value.lower() in ("1", "true", "yes")) if kind is bool else kind(value)
    return out


def write_config(config: ml_collections.ConfigDict, workdir: str | Path) -> Path:
    """Writes the resolved config to `workdir/config.json` (every run records what it ran)."""
    path = Path(workdir) / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config.to_dict(), indent=2, default=str))
    return path


def load_config_module(path: str | Path):
    """The config file at `path` imported as a module (its `get_config`, and `sweep` where it defines one)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such config file")
    spec = importlib.util.spec_from_file_location(f"config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "get_config", None)):
        raise ValueError(f"{path}: defines no get_config(arg)")
    return module
