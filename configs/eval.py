"""Evaluation on a VLMEvalKit benchmark TSV; rescoring a prediction file by VLMEvalKit's rule-based path:

    python -m llavao1_jax.evaluate --config configs/eval.py --config.benchmark=MMStar.tsv \
        --config.predictions=predictions.jsonl --workdir runs/eval/mmstar

`predictions` is our predictions.jsonl or VLMEvalKit's `{model}_{dataset}.xlsx` / `.tsv`.
"""
import ml_collections


def get_config(arg=None) -> ml_collections.ConfigDict:
    del arg  # no config-string arguments
    config = ml_collections.ConfigDict()
    config.benchmark = ""            # the benchmark TSV (required)
    config.predictions = ""          # the prediction file to rescore (required)
    config.name = ""                 # VLMEvalKit dataset name; default: the TSV's file stem
    config.kind = ""                 # one of llavao1_jax.evaluate.KINDS; default: from the name
    config.rules = "p24"             # can_infer rules: "p24" (the paper's VLMEvalKit) or "head" (today's)
    config.answer_from = "conclusion"  # "conclusion" (the <CONCLUSION> body) or "full" (the whole output)
    config.keep_none_options = False   # keep an option whose text is literally "None" (pandas reads it as missing)
    return config
