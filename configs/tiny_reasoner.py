"""The main job (`python -m llavao1_jax.main`, `experiments/tiny_reasoner.py`): the `small` Mllama trained from
scratch on the synthetic reasoning set on 8 fake CPU devices, then greedy decoding, best-of-N and stage-level beam
search on the held-out split.

    python -m llavao1_jax.main --config configs/tiny_reasoner.py:steps=300,questions=100 --workdir runs/tiny_reasoner

Everything the trainer reads is here (configs/sft_tiny.py's fields), plus `evaluation` (configs/eval.py's fields,
the benchmark written by the job) and `methods` (per method, the lj.SearchConfig fields that differ from
`evaluation.search`).
"""
from pathlib import Path

import ml_collections

from llavao1_jax.config_utils import load_config_module, parse_arg


def _config_module(name: str):
    return load_config_module(Path(__file__).with_name(f"{name}.py"))


def get_config(arg=None) -> ml_collections.ConfigDict:
    args = parse_arg(arg, steps=300, questions=100, train=4000, stage_tokens=96, judge_tokens=32)
    c = _config_module("sft_tiny").get_config(f"steps={args.steps},batch=16")
    c.cpu_devices = 8                            # fake CPU devices asked of XLA unless XLA_FLAGS names a count
    c.mesh = ml_collections.ConfigDict(dict(data=2, fsdp=4, tensor=1))
    c.model.preset = "small"
    c.model.gate_init = 1.0                      # cross-attention open from the start (transformers: 0)
    c.data.num_train, c.data.num_test, c.data.image_size, c.data.buckets = args.train, args.questions, 84, (256,)
    c.data.caption_style = "grid"                # every cell named in a fixed place: read far sooner
    c.loss.task_vocab = True                     # softmax over the task's token ids (train/task_vocab.py)
    # The vision tower stays at its random init: its random features keep the image apart (trained, it first
    # learns to output the same features for every image, the quickest way to remove their noise).
    c.optim.freeze = r"^vision_model/"
    c.optim.learning_rate = 4e-3
    c.optim.schedule = "warmup_cosine"
    c.optim.warmup_steps = 20
    c.checkpoint_every = 50
    c.log_every = 10

    c.evaluation = _config_module("eval").get_config()
    c.evaluation.kind = "synthetic_reasoning"
    c.evaluation.dtype = "float32"
    c.evaluation.batch_size = args.questions     # every question in one lj.search call
    c.evaluation.search.max_stage_tokens = args.stage_tokens
    c.evaluation.search.judge_max_tokens = args.judge_tokens
    c.methods = ml_collections.ConfigDict({
        "greedy": dict(method="greedy"),
        "best_of_2": dict(method="best_of_n", n=2),
        "best_of_4": dict(method="best_of_n", n=4),
        "stage_2": dict(method="stage", n=2),
        "stage_4": dict(method="stage", n=4),
    })
    c.example_method = "stage_4"
    return c
