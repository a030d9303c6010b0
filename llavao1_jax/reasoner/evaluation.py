"""One search method over the held-out split, through the evaluation runner, and the figures the main job reports."""
from __future__ import annotations

from pathlib import Path

import ml_collections

from llavao1_jax.evaluate import runner
from llavao1_jax.search import SearchConfig


def search_config(config: ml_collections.ConfigDict, name: str) -> SearchConfig:
    """`config.evaluation.search` with the overrides of `config.methods[name]`."""
    if name not in config.methods:
        raise ValueError(f"config.methods has no method {name!r}; it has {sorted(config.methods)}")
    fields = config.evaluation.search.to_dict()
    fields.update(config.methods[name].to_dict())
    return SearchConfig.from_dict(fields)


def method_figures(summary: dict) -> dict:
    """From the runner's summary: format_validity and accuracy (percent), generated tokens (candidates and judge
    calls) and wall seconds per question, and the number of questions."""
    return {"format_validity": summary["format_validity"], "accuracy": summary["overall"],
            "tokens_per_question": summary["tokens_per_question"],
            "seconds_per_question": summary["seconds_per_question"], "questions": summary["n"]}


def evaluate_method(config: ml_collections.ConfigDict, name: str, benchmark: Path, workdir: Path, generator,
                    processor) -> dict:
    """Runs (or resumes) method `name` on `benchmark` in `workdir` and returns its figures (`method_figures`)."""
    eval_config = ml_collections.ConfigDict(config.evaluation.to_dict())
    eval_config.benchmark = str(benchmark)
    summary = runner.run(eval_config, workdir, generator, processor, search_config(config, name))
    return method_figures(summary)
