"""Evaluation on a VLMEvalKit benchmark TSV: run a model, or rescore a prediction file by VLMEvalKit's rule-based path.

    python -m llavao1_jax.evaluate --config configs/eval.py --config.benchmark=MMStar.tsv --config.model=DIR \
        --workdir runs/eval/mmstar [--config.search.method=stage --config.search.n=2] [--config.limit=N]
    python -m llavao1_jax.evaluate --config configs/eval.py --config.benchmark=MMStar.tsv \
        --config.predictions=predictions.jsonl --workdir runs/eval/mmstar

`predictions` is our predictions.jsonl or VLMEvalKit's `{model}_{dataset}.xlsx` / `.tsv`. `search` is
configs/search.py's config (lj.SearchConfig's fields), here with method "greedy".
"""
from pathlib import Path

import ml_collections

from llavao1_jax.config_utils import load_config_module


def _search_config() -> ml_collections.ConfigDict:
    return load_config_module(Path(__file__).with_name("search.py")).get_config("method=greedy")


def get_config(arg=None) -> ml_collections.ConfigDict:
    del arg  # no config-string arguments
    config = ml_collections.ConfigDict()
    config.benchmark = ""            # the benchmark TSV (required)
    config.predictions = ""          # a prediction file to rescore; or else
    config.model = ""                # a transformers-format checkpoint to run
    config.name = ""                 # VLMEvalKit dataset name; default: the TSV's file stem
    config.kind = ""                 # one of llavao1_jax.evaluate.KINDS; default: from the name
    config.rules = "p24"             # can_infer rules: "p24" (the paper's VLMEvalKit) or "head" (today's)
    config.answer_from = "conclusion"  # "conclusion" (the <CONCLUSION> body) or "full" (the whole output)
    config.keep_none_options = False   # keep an option whose text is literally "None" (pandas reads it as missing)
    # Running a model.
    config.dtype = "bfloat16"
    config.batch_size = 8            # questions per lj.search call
    config.limit = 0                 # the first `limit` rows only (0: all)
    config.strict = False            # fail on an undecodable image instead of skipping and counting the row
    config.jpeg_round_trip = False   # the paper-era VLMEvalKit's JPEG re-encoding of every image
    config.llava_cot = True          # the LLaVA-CoT model class's prompt overrides (AI2D)
    config.search = _search_config()
    return config
