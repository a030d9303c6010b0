"""The structure ablation (the paper's Table 2 in miniature): the main job's small reasoner trained with the same
steps on (a) direct answers, (b) reasoning without stage tags, (c) the four tagged stages; greedy accuracy of each
on the same held-out questions.

    python experiments/structure_ablation.py --workdir runs/structure_ablation [--config configs/structure_ablation.py:steps=300]
    python experiments/sweep.py --module llavao1_jax.main --config configs/structure_ablation.py --workdir W --print slurm

`sweep` lists the three points (for experiments/sweep.py too); each point is a main-job config.
"""
from pathlib import Path

from llavao1_jax.config_utils import load_config_module

FORMATS = ("direct", "untagged", "tagged")


def get_config(arg=None):
    """The main job's config (same arguments) with greedy decoding as the only method."""
    config = load_config_module(Path(__file__).with_name("tiny_reasoner.py")).get_config(arg)
    config.methods = {"greedy": dict(method="greedy")}
    config.example_method = "greedy"
    config.cpu_devices = 1  # three trainings: on a small CPU one device each is quickest
    config.mesh.data, config.mesh.fsdp = 1, -1
    return config


def sweep(add):
    for answer_format in FORMATS:
        add(**{"data.answer_format": answer_format})
