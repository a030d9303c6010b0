"""The structure ablation (the paper's Table 2 in miniature): the main job's small reasoner trained with the same
steps on (a) direct answers, (b) reasoning without stage tags, (c) the four tagged stages; greedy accuracy of each
on the same held-out questions.

    python experiments/structure_ablation.py --workdir runs/structure_ablation [--config configs/structure_ablation.py:steps=300]

`sweep` lists the three points (for experiments/sweep.py too); each point is a main-job config.
"""
import importlib.util
from pathlib import Path

FORMATS = ("direct", "untagged", "tagged")


def get_config(arg=None):
    spec = importlib.util.spec_from_file_location("tiny_reasoner", Path(__file__).with_name("tiny_reasoner.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg)
    config.methods = {"greedy": dict(method="greedy")}
    config.example_method = "greedy"
    return config


def sweep(add):
    for answer_format in FORMATS:
        add(**{"data.answer_format": answer_format})
