"""The embedded default run: a tiny random Mllama on synthetic reasoning problems, on CPU.

    python -m llavao1_jax.demo                                       # this config
    python -m llavao1_jax.demo --config=configs/demo.py:problems=8 --config.max_new_tokens=64
"""
import ml_collections

from llavao1_jax.config_utils import parse_arg


def get_config(arg=None) -> ml_collections.ConfigDict:
    args = parse_arg(arg, problems=4, preset="tiny")
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict(dict(preset=args.preset, seed=0, dtype="float32"))
    config.data = ml_collections.ConfigDict(dict(problems=args.problems, seed=0, image_size=112))
    config.max_new_tokens = 24
    config.workdir = "runs/demo"
    return config
