"""Evaluation on a VLMEvalKit benchmark TSV (configs/eval.py): run a model, or rescore a prediction file
(`llavao1-evaluate` is the same command).

    python -m llavao1_jax.evaluate --config configs/eval.py --config.benchmark=PATH.tsv --config.model=DIR \
        --workdir W [--config.search.method=stage --config.search.n=2] [--config.limit=N]
    python -m llavao1_jax.evaluate --config configs/eval.py --config.benchmark=PATH.tsv \
        --config.predictions=FILE --workdir W

Writes W/config.json (the resolved config), the VLMEvalKit-layout `*_acc.csv` / `*_score.csv`, a judge-ready
`*_judge_input.tsv` when some rows need a judge, and W/summary.json, and prints the table. A model run also
appends W/predictions.jsonl as it goes (a rerun resumes) and writes VLMEvalKit's prediction file.
"""
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from llavao1_jax.config_utils import write_config
from llavao1_jax.evaluate.api import format_report, score

_DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "eval.py"
_CONFIG = config_flags.DEFINE_config_file("config", str(_DEFAULT_CONFIG), "ml_collections config file",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "folder for the config, predictions, tables and summary.json",
                               required=True)


def _run_model(config, workdir):
    # The model side (jax) is imported only when a model runs: rescoring stays light.
    import llavao1_jax as lj
    from llavao1_jax.cli.generate import load_for_decoding
    from llavao1_jax.cli.quiet import quiet_library_logs
    from llavao1_jax.evaluate.runner import run

    quiet_library_logs()
    generator, processor = load_for_decoding(config.model, config.dtype)
    run(config, workdir, generator, processor, lj.SearchConfig.from_dict(config.search.to_dict()))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    config = _CONFIG.value
    if not config.benchmark:
        raise app.UsageError("--config.benchmark is required")
    if bool(config.predictions) == bool(config.model):
        raise app.UsageError("give exactly one of --config.predictions (rescore) and --config.model (run a model)")
    write_config(config, _WORKDIR.value)
    if config.model:
        _run_model(config, _WORKDIR.value)
        return
    report = score(config.benchmark, config.predictions, rules=config.rules, answer_from=config.answer_from,
                   workdir=_WORKDIR.value, name=config.name or None, kind=config.kind or None,
                   keep_none_options=config.keep_none_options)
    print(format_report(report))


def run() -> None:
    """The `llavao1-evaluate` console script."""
    app.run(main)


if __name__ == "__main__":
    run()
