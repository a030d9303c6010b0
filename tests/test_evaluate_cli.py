"""`python -m llavao1_jax.evaluate` rescoring a prediction file: the resolved config, the tables and summary.json in
the workdir, and a clear error when a required config key is missing."""
import json
import subprocess
import sys
from pathlib import Path

from evaluate_files import png_base64, write_tsv

ROOT = Path(__file__).resolve().parents[1]


def _run(*args):
    return subprocess.run([sys.executable, "-m", "llavao1_jax.evaluate", "--config", str(ROOT / "configs/eval.py"),
                           *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_rescoring_writes_config_tables_and_summary(tmp_path):
    bench = write_tsv(tmp_path / "MMStar.tsv", [
        dict(index=i, question="q", answer="A", category="math", A="x", B="y", image=png_base64((9, 9, 9)))
        for i in range(2)])
    (tmp_path / "p.tsv").write_text("index\tquestion\tanswer\tprediction\n0\tq\tA\tA\n1\tq\tA\tB\n")
    run = _run(f"--config.benchmark={bench}", f"--config.predictions={tmp_path / 'p.tsv'}", "--config.rules=head",
               "--config.answer_from=full", f"--workdir={tmp_path / 'w'}")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "overall accuracy" in run.stdout and "50.00" in run.stdout
    config = json.loads((tmp_path / "w" / "config.json").read_text())
    assert (config["rules"], config["answer_from"], config["benchmark"]) == ("head", "full", str(bench))
    summary = json.loads((tmp_path / "w" / "summary.json").read_text())
    assert (summary["overall"], summary["rules"], summary["by_category"]) == (50.0, "head", {"math": 50.0})
    assert (tmp_path / "w" / "MMStar_acc.csv").read_text() == "split,Overall,math\nnone,0.5,0.5\n"


def test_missing_predictions_key_is_a_usage_error(tmp_path):
    run = _run("--config.benchmark=x.tsv", f"--workdir={tmp_path / 'w'}")
    assert run.returncode != 0 and "exactly one of --config.predictions" in run.stderr
    assert not (tmp_path / "w").exists()


def test_console_script_points_at_the_cli():
    # setup.py's `llavao1-evaluate` entry names a function that runs this same command line.
    line = next(line for line in (ROOT / "setup.py").read_text().splitlines() if "llavao1-evaluate =" in line)
    module, function = line.split("=")[1].strip().strip('",').split(":")
    run = subprocess.run([sys.executable, "-c", f"import sys; sys.argv = ['llavao1-evaluate', '--helpfull']; "
                          f"from {module} import {function}; {function}()"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert "--workdir: folder for the config, predictions" in run.stdout and "configs/eval.py" in run.stdout
