"""LLaVA-CoT's recipe: full fine-tuning of Llama-3.2-11B-Vision-Instruct on LLaVA-CoT-100k.

One node of 8 x H100 (80 GB), FSDP over the 8 GPUs, bfloat16 compute with float32 master weights and AdamW state,
full activation checkpointing, fused cuDNN attention, global batch 32 (4 per GPU), context 4096, AdamW lr 1e-5 without
weight decay, warmup or clipping, the learning rate times 0.85 after each epoch, 3 epochs, seed 42.

    # one node, 8 GPUs (one process)
    python -m llavao1_jax.train --config configs/sft_llava_cot_11b.py --workdir runs/llava_cot_11b \\
        --config.model.init_from=/models/Llama-3.2-11B-Vision-Instruct --config.data.data_dir=/data/tfds
    # several nodes (the multi-node variant): same global batch, FSDP within a node, data parallel across nodes
    python -m llavao1_jax.train --config configs/sft_llava_cot_11b.py:nodes=2 ...   # once per node, see README
    # will it fit? per-device memory and FLOPs on 8 fake CPU devices, nothing allocated
    python -m llavao1_jax.train.plan --config configs/sft_llava_cot_11b.py
"""
import ml_collections

from configs.sft_tiny import get_config as tiny_config
from llavao1_jax.config_utils import parse_arg


def get_config(arg=None) -> ml_collections.ConfigDict:
    args = parse_arg(arg, nodes=1, gpus_per_node=8)
    c = tiny_config()
    c.seed = 42
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = args.nodes, args.gpus_per_node, 1
    c.batch_size = 32
    c.grad_accum = 1
    c.total_steps = 0
    c.num_epochs = 3
    c.checkpoint_every = 500
    c.keep_checkpoints = 3
    c.log_every = 10
    c.eval_every = 500
    c.eval_batches = 8
    c.sample_every = 0
    c.peak_flops_per_device = 989e12   # H100 SXM dense bf16
    c.xla_gpu_overlap = True
    c.model.update(dict(preset="llama-3.2-11b-vision", init_from="", dtype="bfloat16", param_dtype="float32",
                        remat="full", attention_impl="cudnn"))
    c.data.update(dict(name="llava_cot_100k", data_dir="", buckets=(1024, 2048, 4096), num_workers=8))
    c.loss.chunk_size = 512
    c.optim.update(dict(learning_rate=1e-5, schedule="epoch_decay", epoch_decay=0.85, warmup_steps=0,
                        weight_decay=0.0, clip_norm=0.0))
    return c
