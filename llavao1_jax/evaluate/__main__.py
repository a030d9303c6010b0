"""Rescoring a prediction file against a VLMEvalKit benchmark TSV (configs/eval.py):

    python -m llavao1_jax.evaluate --config configs/eval.py --config.benchmark=PATH.tsv \
        --config.predictions=FILE --workdir W

Writes W/config.json (the resolved config), the VLMEvalKit-layout `*_acc.csv` / `*_score.csv`, a judge-ready
`*_judge_input.tsv` when some rows need a judge, and W/summary.json; prints the table.
"""
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from llavao1_jax.config_utils import write_config
from llavao1_jax.evaluate.api import format_report, score

_DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "eval.py"
_CONFIG = config_flags.DEFINE_config_file("config", str(_DEFAULT_CONFIG), "ml_collections config file",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "folder for the config, tables and summary.json", required=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    config = _CONFIG.value
    for key in ("benchmark", "predictions"):
        if not config[key]:
            raise app.UsageError(f"--config.{key} is required")
    write_config(config, _WORKDIR.value)
    report = score(config.benchmark, config.predictions, rules=config.rules, answer_from=config.answer_from,
                   workdir=_WORKDIR.value, name=config.name or None, kind=config.kind or None,
                   keep_none_options=config.keep_none_options)
    print(format_report(report))


if __name__ == "__main__":
    app.run(main)
