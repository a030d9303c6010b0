"""The sweep launcher (llavao1_jax/sweep.py, experiments/sweep.py) on a fake job script that writes results.json:
points run one after another and resume, the printed SLURM / GNU parallel command lines run the same points, the
gathered table, and clear errors for a config without sweep() or with an unknown key."""
import csv
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FAKE_JOB = '''
import argparse, json, pathlib, sys
parser = argparse.ArgumentParser()
parser.add_argument("--config")
parser.add_argument("--workdir")
args, overrides = parser.parse_known_args()
values = dict(o[len("--config."):].split("=", 1) for o in overrides)
workdir = pathlib.Path(args.workdir)
workdir.mkdir(parents=True, exist_ok=True)
with open(workdir.parent / "calls.log", "a") as log:
    log.write(workdir.name + "\\n")
if values.get("lr") == "0.3":
    sys.exit(3)
lr, depth = float(values.get("lr", 0.1)), int(values.get("model.depth", 2))
(workdir / "results.json").write_text(json.dumps(
    {"methods": {"greedy": {"accuracy": 10 * lr + depth, "valid": True}}, "seconds": [1, 2.5], "note": "x"}))
'''

CONFIG = '''
import ml_collections

def get_config(arg=None):
    config = ml_collections.ConfigDict()
    config.lr = 0.1
    config.model = ml_collections.ConfigDict({"depth": 2})
    config.name = arg or "base"
    return config

def sweep(add):
    for lr in (0.1, 0.2):
        add(lr=lr, **{"model.depth": 4})
    add(lr=0.3)
'''


def _launch(tmp_path, *args, config="cfg.py"):
    return subprocess.run([sys.executable, str(ROOT / "experiments" / "sweep.py"), "--script",
                           str(tmp_path / "job.py"), "--config", str(tmp_path / config), "--workdir",
                           str(tmp_path / "base"), *args], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})  # this checkout's package, not an install


@pytest.fixture
def files(tmp_path):
    (tmp_path / "job.py").write_text(FAKE_JOB)
    (tmp_path / "cfg.py").write_text(CONFIG)
    return tmp_path


def _calls(tmp_path):
    return (tmp_path / "base" / "calls.log").read_text().split()


def test_run_resumes_and_gathers(files):
    first = _launch(files, "--run")
    assert first.returncode == 1  # the lr=0.3 point fails; the others still ran
    assert "1 of 3 points failed: ['lr=0.3']" in first.stdout
    assert _calls(files) == ["lr=0.1,model.depth=4", "lr=0.2,model.depth=4", "lr=0.3"]
    second = _launch(files, "--run")
    assert second.returncode == 1 and second.stdout.count("skipped") == 2
    assert _calls(files)[3:] == ["lr=0.3"]  # only the point without results.json ran again

    gathered = _launch(files, "--gather")
    assert gathered.returncode == 0, gathered.stderr
    with open(files / "base" / "sweep_results.csv") as f:
        table = list(csv.DictReader(f))
    assert table == [
        {"point": "lr=0.1,model.depth=4", "lr": "0.1", "model.depth": "4", "status": "done",
         "methods.greedy.accuracy": "5.0", "seconds.0": "1", "seconds.1": "2.5"},
        {"point": "lr=0.2,model.depth=4", "lr": "0.2", "model.depth": "4", "status": "done",
         "methods.greedy.accuracy": "6.0", "seconds.0": "1", "seconds.1": "2.5"},
        {"point": "lr=0.3", "lr": "0.3", "model.depth": "", "status": "missing", "methods.greedy.accuracy": "",
         "seconds.0": "", "seconds.1": ""}]
    markdown = (files / "base" / "sweep_results.md").read_text().splitlines()
    assert markdown[0] == "| point | lr | model.depth | status | methods.greedy.accuracy | seconds.0 | seconds.1 |"
    assert markdown[3] == "| lr=0.2,model.depth=4 | 0.2 | 4 | done | 6 | 1 | 2.5 |"
    assert gathered.stdout.splitlines()[:len(markdown)] == markdown


def test_printed_command_lines_run_the_points(files):
    parallel = _launch(files, "--print", "parallel", "--python", "python3")
    lines = parallel.stdout.splitlines()
    assert len(lines) == 3
    assert shlex.split(lines[0]) == ["python3", str(files / "job.py"), "--config", str(files / "cfg.py"),
                                     "--workdir", str(files / "base" / "lr=0.1,model.depth=4"), "--config.lr=0.1",
                                     "--config.model.depth=4"]
    assert _launch(files, "--module", "llavao1_jax.train", "--print", "parallel").returncode == 2  # one of the two
    module = subprocess.run([sys.executable, "-m", "llavao1_jax.sweep", "--module", "llavao1_jax.train", "--config",
                             str(files / "cfg.py:wide"), "--workdir", "runs", "--print", "parallel"],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert shlex.split(module.stdout.splitlines()[2]) == [sys.executable, "-m", "llavao1_jax.train", "--config",
                                                          str(files / "cfg.py:wide"), "--workdir", "runs/lr=0.3",
                                                          "--config.lr=0.3"]
    plain = _launch(files, "--print", "plain").stdout.splitlines()
    assert plain[2].startswith("lr=0.3: ") and plain[2].endswith("--config.lr=0.3")

    script = files / "sweep.sbatch"
    script.write_text(_launch(files, "--print", "slurm", "--python", sys.executable).stdout)
    assert "#SBATCH --array=0-2" in script.read_text()
    task = subprocess.run(["bash", str(script)], env={**os.environ, "SLURM_ARRAY_TASK_ID": "1"}, timeout=60)
    assert task.returncode == 0
    assert _calls(files) == ["lr=0.2,model.depth=4"]
    assert json.loads((files / "base" / "lr=0.2,model.depth=4" / "results.json").read_text())["seconds"] == [1, 2.5]
    assert subprocess.run(["bash", str(script)], env={**os.environ, "SLURM_ARRAY_TASK_ID": "7"},
                          capture_output=True, text=True).stderr == "no sweep point 7\n"


def test_config_errors(files):
    (files / "nosweep.py").write_text(CONFIG.split("def sweep")[0])
    run = _launch(files, "--run", config="nosweep.py")
    assert run.returncode == 2 and "nosweep.py: defines no sweep(add)" in run.stderr
    (files / "badkey.py").write_text(CONFIG + "\n    add(**{'model.width': 8})\n")
    run = _launch(files, "--print", "plain", config="badkey.py")
    assert run.returncode == 2 and "badkey.py: sweep point 3 sets ['model.width'], which the config does not have" \
        in run.stderr
    assert not (files / "base").exists()  # nothing ran
