"""Sweeps defined in a config, big_vision style: the config file's `sweep(add)` calls `add(**overrides)` once per
point (dotted keys through `**{"model.depth": 4}`). The launcher (experiments/sweep.py, or `python -m
llavao1_jax.sweep`) runs each point as

    python -m MODULE --config FILE[:ARG] --workdir BASE/<point name> --config.KEY=VALUE ...

one after another here (`--run`, skipping points whose workdir already holds results.json), prints the command
lines for a cluster scheduler (`--print slurm` writes a job-array script, `--print parallel` one line per point for
GNU parallel, `--print plain` the lines with their point names), and gathers every point's results.json (its
numeric leaves, flattened to dotted names) into BASE/sweep_results.csv and BASE/sweep_results.md (`--gather`).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import re
import shlex
import subprocess
import sys
from pathlib import Path

from llavao1_jax.config_utils import load_config_module

RESULTS = "results.json"
PRINT_FORMATS = ("slurm", "parallel", "plain")


@dataclasses.dataclass(frozen=True)
class Point:
    """One sweep point: its overrides (config key -> value) and the workdir name made from them."""

    overrides: dict

    @property
    def name(self) -> str:
        """E.g. `lr=0.001,model.depth=4` (characters other than letters, digits, `._=,+-` become `-`)."""
        text = ",".join(f"{key}={format_value(value)}" for key, value in self.overrides.items()) or "default"
        return re.sub(r"[^\w.=,+-]", "-", text)


def format_value(value) -> str:
    """A value as a `--config.KEY=VALUE` flag spells it."""
    return value if isinstance(value, str) else repr(value)


def _config_keys(config, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in config.items():
        keys.add(prefix + key)
        if hasattr(value, "items"):
            keys |= _config_keys(value, f"{prefix}{key}.")
    return keys


def sweep_points(config_spec: str) -> list[Point]:
    """The points of the sweep in `config_spec` (`FILE` or `FILE:ARG`), each override key checked against the
    config `get_config(ARG)` builds."""
    path, _, arg = config_spec.partition(":")
    module = load_config_module(path)
    if not callable(getattr(module, "sweep", None)):
        raise ValueError(f"{path}: defines no sweep(add); a sweep config calls add(**overrides) once per point")
    keys = _config_keys(module.get_config(arg or None))
    points = []

    def add(**overrides):
        unknown = sorted(set(overrides) - keys)
        if unknown:
            raise ValueError(f"{path}: sweep point {len(points)} sets {unknown}, which the config does not have")
        points.append(Point(dict(overrides)))

    module.sweep(add)
    if not points:
        raise ValueError(f"{path}: sweep(add) added no points")
    names = [point.name for point in points]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"{path}: sweep points repeat: {repeated}")
    return points


def command(target: list[str], config_spec: str, base: Path, point: Point) -> list[str]:
    """The command line of one point: `target` (e.g. [python, -m, MODULE]), the config, its workdir, overrides."""
    return [*target, "--config", config_spec, "--workdir", str(base / point.name),
            *(f"--config.{key}={format_value(value)}" for key, value in point.overrides.items())]


def run_points(target, config_spec, base: Path, points: list[Point], out=sys.stdout) -> int:
    """Runs the points one after another; a point whose workdir holds results.json is skipped. Returns the
    number of points that failed (the others still run)."""
    failed = []
    for number, point in enumerate(points, start=1):
        label = f"[{number}/{len(points)}] {point.name}"
        if (base / point.name / RESULTS).exists():
            print(f"{label}: done already ({RESULTS} there), skipped", file=out, flush=True)
            continue
        print(f"{label}: running", file=out, flush=True)
        code = subprocess.run(command(target, config_spec, base, point)).returncode
        if code or not (base / point.name / RESULTS).exists():
            failed.append(point.name)
            print(f"{label}: failed (exit status {code}{'' if code else f', no {RESULTS}'})", file=out, flush=True)
    if failed:
        print(f"{len(failed)} of {len(points)} points failed: {failed}", file=out)
    return len(failed)


def print_commands(fmt: str, target, config_spec, base: Path, points: list[Point]) -> str:
    """The command lines for a scheduler: a SLURM job-array script (`slurm`), one line per point (`parallel`), or
    `name: line` per point (`plain`)."""
    lines = [shlex.join(command(target, config_spec, base, point)) for point in points]
    if fmt == "parallel":
        return "\n".join(lines) + "\n"
    if fmt == "plain":
        return "".join(f"{point.name}: {line}\n" for point, line in zip(points, lines))
    if fmt == "slurm":
        cases = "".join(f"  {i}) {line} ;;\n" for i, line in enumerate(lines))
        return (f"#!/bin/bash\n#SBATCH --array=0-{len(points) - 1}\n#SBATCH --job-name=sweep\n"
                f"# One task per sweep point; submit with: sbatch THIS_FILE\nset -eu\n"
                f"case \"$SLURM_ARRAY_TASK_ID\" in\n{cases}"
                f"  *) echo \"no sweep point $SLURM_ARRAY_TASK_ID\" >&2; exit 1 ;;\nesac\n")
    raise ValueError(f"unknown print format {fmt!r}; expected one of {PRINT_FORMATS}")


def numeric_leaves(tree, prefix: str = "") -> dict[str, float]:
    """The int and float leaves of a JSON tree (bools and strings left out), keyed by dotted path."""
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, list):
        items = enumerate(tree)
    else:
        return {prefix[:-1]: tree} if isinstance(tree, (int, float)) and not isinstance(tree, bool) else {}
    out = {}
    for key, value in items:
        out.update(numeric_leaves(value, f"{prefix}{key}."))
    return out


def gather(base: Path, points: list[Point]) -> list[dict]:
    """One table row per point: `point`, its overrides, `status` (done / missing) and its results' numeric leaves;
    written to BASE/sweep_results.csv and BASE/sweep_results.md."""
    table = []
    for point in points:
        path = base / point.name / RESULTS
        row = {"point": point.name, **{k: format_value(v) for k, v in point.overrides.items()}}
        if path.exists():
            try:
                results = json.loads(path.read_text())
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: not JSON ({error})") from None
            row.update(status="done", **numeric_leaves(results))
        else:
            row["status"] = "missing"
        table.append(row)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, _columns(table), lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    base.mkdir(parents=True, exist_ok=True)
    (base / "sweep_results.csv").write_text(buffer.getvalue())
    (base / "sweep_results.md").write_text(markdown_table(table))
    return table


def _columns(table: list[dict]) -> list[str]:
    return list(dict.fromkeys(k for row in table for k in row))


def _cell(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return "" if value is None else str(value)


def markdown_table(table: list[dict]) -> str:
    """`table` as a markdown table (floats to 6 significant digits, absent cells empty)."""
    columns = _columns(table)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in table]
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python experiments/sweep.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--module", help="the module each point runs (python -m MODULE)")
    what.add_argument("--script", help="or the script each point runs (python SCRIPT)")
    parser.add_argument("--config", required=True, help="config file with get_config(arg) and sweep(add); FILE:ARG")
    parser.add_argument("--workdir", required=True, help="base folder; each point runs in BASE/<point name>")
    parser.add_argument("--python", default=sys.executable, help="the interpreter in the command lines")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--run", action="store_true", help="run the points one after another, here")
    action.add_argument("--print", choices=PRINT_FORMATS, help="print the command lines for a scheduler")
    action.add_argument("--gather", action="store_true", help="gather every point's results.json into one table")
    return parser


def main(argv=None) -> int:
    """The command line (experiments/sweep.py); returns the exit status."""
    args = _parser().parse_args(argv)
    target = [args.python, "-m", args.module] if args.module else [args.python, args.script]
    base = Path(args.workdir)
    try:
        points = sweep_points(args.config)
        if args.print:
            sys.stdout.write(print_commands(args.print, target, args.config, base, points))
            return 0
        if args.run:
            return 1 if run_points(target, args.config, base, points) else 0
        table = gather(base, points)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    sys.stdout.write(markdown_table(table))
    print(f"wrote {base / 'sweep_results.csv'} and {base / 'sweep_results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
