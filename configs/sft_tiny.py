"""SFT of the tiny random model on the synthetic reasoning set, on CPU in minutes.

    python -m llavao1_jax.train --config configs/sft_tiny.py --workdir runs/sft_tiny
    python -m llavao1_jax.train --config configs/sft_tiny.py:steps=200 --workdir runs/sft_tiny --config.mesh.fsdp=4

`get_config` builds every field the trainer reads; configs/sft_llava_cot_11b.py starts from it.
"""
import ml_collections

from llavao1_jax.config_utils import parse_arg
from llavao1_jax.data import synthetic_reasoning as sr
from llavao1_jax.sharding import DEFAULT_RULES


def get_config(arg=None) -> ml_collections.ConfigDict:
    args = parse_arg(arg, steps=60, batch=8)
    c = ml_collections.ConfigDict()
    c.seed = 0
    # Device mesh (data x fsdp x tensor; -1 once: the devices the others leave) and the logical-axis rules.
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
    c.sharding_rules = tuple((name, axes) for name, axes in DEFAULT_RULES)
    c.batch_size = args.batch          # global, over all processes and micro-batches
    c.grad_accum = 1                   # micro-batches per step (lax.scan inside the step)
    c.total_steps = args.steps         # 0: num_epochs epochs of the train split
    c.num_epochs = 0
    c.checkpoint_every = 20
    c.keep_checkpoints = 2
    c.async_checkpointing = True
    c.log_every = 5
    c.eval_every = 0                   # held-out loss every K steps (0: never)
    c.eval_batches = 2
    c.sample_every = 0                 # a greedy sample on a held-out question every K steps (0: never)
    c.sample_max_new_tokens = 48
    c.export_hf = True                 # workdir/hf at the end: transformers weights + processor files
    c.peak_flops_per_device = 0.0      # for model FLOPs utilisation (0: not logged); e.g. 989e12 for H100 bf16
    c.xla_gpu_overlap = False          # XLA GPU flags that overlap collectives with compute (set before jax starts)
    # XLA CPU's order of the steps' ops: "default", "memory_optimized" (least peak memory; it deadlocked the
    # collectives of a 2-step run on 8 fake devices, so one device only) or "concurrency_optimized"
    c.xla_cpu_scheduler = "default"

    # gate_init: the cross-attention gates of a random init (transformers: 0, no image information at first)
    c.model = ml_collections.ConfigDict(dict(
        preset="tiny", init_from="", dtype="float32", param_dtype="float32", remat="none", attention_impl="xla",
        gate_init=0.0))
    # judge_fraction: judge records added to the synthetic train split per question (data/judge_samples.py);
    # caption_style: "objects" (the shapes in grid order), "grid" (every cell, empty ones too) or "cells" (every
    # cell after its name) or "numbered" (every cell after its number); background: "light" gray or "mean" (the
    # processor's normalisation mean); question_types: the mix of question types, drawn uniformly
    c.data = ml_collections.ConfigDict(dict(
        name="synthetic_reasoning", data_dir="", num_train=64, num_test=16, seed=0, image_size=56, judge_fraction=0.0,
        caption_style="objects", background="light", question_types=sr.DEFAULT_QUESTION_TYPES, buckets=(256, 512),
        answer_format="tagged", num_workers=0))
    # chunk_size: supervised positions per row per head chunk; task_vocab: softmax over the ids the training
    # targets use plus the special tokens (train/task_vocab.py), decoding restricted to them
    c.loss = ml_collections.ConfigDict(dict(chunk_size=128, task_vocab=False))
    c.optim = ml_collections.ConfigDict(dict(
        name="adamw", learning_rate=3e-3, schedule="constant", warmup_steps=0, epoch_decay=0.85,
        end_learning_rate=0.0, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
        weight_decay_exclude=r"(norm|bias|gate|embed)", clip_norm=1.0, freeze="", lr_scale_pattern="", lr_scale=1.0))
    return c
