"""Inference scaling (the paper's v1 Tables 5 and 6 in miniature): one small reasoner (the main job's, or trained
here), decoded with greedy, sampling, best-of-N, sentence-level and stage-level beam search at N = 1, 2, 4, 8 with
the logprob scorer and the self-judge, and SWIRES with the logprob scorer, each sampling method over several seeds.

    python experiments/inference_scaling.py --workdir runs/inference_scaling \
        [--config configs/inference_scaling.py:questions=50,seeds=2] [--config.scaling.model_dir=runs/tiny_reasoner/hf]
"""
from pathlib import Path

import ml_collections

from llavao1_jax.config_utils import load_config_module, parse_arg


def get_config(arg=None):
    args = parse_arg(arg, questions=50, seeds=2, steps=300)
    config = load_config_module(Path(__file__).with_name("tiny_reasoner.py")).get_config(
        f"questions={args.questions},steps={args.steps}")
    config.scaling = ml_collections.ConfigDict(dict(
        model_dir="",                                  # a trained reasoner's hf/ (empty: train one in the workdir)
        ns=(1, 2, 4, 8), seeds=args.seeds,
        searches=("best_of_n", "sentence", "stage"),   # each with every judge and N
        judges=("logprob", "self"),
        swires_judge="logprob"))
    return config
