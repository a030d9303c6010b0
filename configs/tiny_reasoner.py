"""The main job (`python -m llavao1_jax.main`, `experiments/tiny_reasoner.py`): the `small` Mllama trained from
scratch on the synthetic reasoning set on 8 fake CPU devices, then greedy decoding, best-of-N and stage-level beam
search on the held-out split.

    python -m llavao1_jax.main --config configs/tiny_reasoner.py:steps=500,questions=100 --workdir runs/tiny_reasoner
    python -m llavao1_jax.main --config configs/tiny_reasoner.py:judges=0.25 --workdir runs/tiny_reasoner_judge

`judges` is `data.judge_fraction`: judge records in the train split per question, so the self-judge learns to judge
(their rows need a 384-token bucket, which about doubles the training time, and verdicts 32 tokens).

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
    args = parse_arg(arg, steps=500, questions=100, train=4000, stage_tokens=88, judge_tokens=0, judges=0.0)
    c = _config_module("sft_tiny").get_config(f"steps={args.steps},batch=8")
    c.cpu_devices = 8                            # fake CPU devices asked of XLA unless XLA_FLAGS names a count
    # FSDP over all 8 (the paper's recipe's mesh): 0.52 s a step here, against 0.65 s for data=2 x fsdp=4 and
    # 1.4 s for data=8, whose every step all-reduces the whole embedding's gradient
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=8, tensor=1))
    c.model.preset = "small"
    c.model.gate_init = 1.0                      # cross-attention open from the start (transformers: 0)
    c.data.num_train, c.data.num_test, c.data.image_size = args.train, args.questions, 84
    c.data.judge_fraction = args.judges
    c.data.buckets = (192, 384) if args.judges else (192,)  # questions: at most 187 tokens; judge records: 342
    c.data.caption_style = "numbered"            # every cell after its own number: read far sooner
    # Multiple-choice questions only: the open counts and the arithmetic stayed at the blind baseline (see
    # docs/tiny_reasoner.md)
    c.data.question_types = ("count_choice", "attribute_choice", "position_choice")
    c.data.background = "mean"                   # empty cells are zero after the processor's normalisation
    c.loss.task_vocab = True                     # softmax over the task's token ids (train/task_vocab.py)
    # The vision tower stays at its random init but for its patch position embedding: its random features keep
    # the images apart (trained, it first learns to output the same features for every image, the quickest way
    # to remove their noise). What reads the image (the projector, the cross-attention and the position
    # embedding) learns at 3x the learning rate.
    c.optim.freeze = r"^vision_model/(?!gated_positional_embedding/embedding)"
    c.optim.lr_scale_pattern = (r"^(multi_modal_projector|language_model/cross_layers/(cross_attn|k_norm|q_norm)|"
                                r"vision_model/gated_positional_embedding/embedding)")
    c.optim.lr_scale = 3.0
    c.optim.learning_rate = 4e-3
    c.optim.schedule = "warmup_cosine"
    c.optim.warmup_steps = 20
    c.checkpoint_every = 300
    c.log_every = 10

    c.evaluation = _config_module("eval").get_config()
    c.evaluation.kind = "synthetic_reasoning"
    c.evaluation.dtype = "float32"
    c.evaluation.batch_size = args.questions     # every question in one lj.search call
    c.evaluation.search.max_stage_tokens = args.stage_tokens
    # a trained judge's verdicts run to about 30 tokens; an untrained one never writes one
    c.evaluation.search.judge_max_tokens = args.judge_tokens or (32 if args.judges else 16)
    # Candidates at 0.6 (the paper's) were right less often than greedy answers: 36-43% against 48% greedy, and
    # 41-42% at 0.3 (N = 4, the same model)
    c.evaluation.search.temperature = 0.3
    c.methods = ml_collections.ConfigDict({
        "greedy": dict(method="greedy"),
        "best_of_2": dict(method="best_of_n", n=2),
        "best_of_4": dict(method="best_of_n", n=4),
        "stage_2": dict(method="stage", n=2),
        "stage_4": dict(method="stage", n=4),
    })
    c.example_method = "stage_4"
    return c
