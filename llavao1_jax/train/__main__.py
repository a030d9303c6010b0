"""`python -m llavao1_jax.train --config configs/sft_tiny.py --workdir DIR [--config.FIELD=VALUE ...]`.

Trains, resuming from the latest checkpoint in DIR if there is one. Launched with the usual multi-process
environment (JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + JAX_PROCESS_ID, or a SLURM allocation of several tasks),
it first joins the other processes with `jax.distributed.initialize()`.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

_DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "sft_tiny.py"
_CONFIG = config_flags.DEFINE_config_file("config", str(_DEFAULT_CONFIG), "ml_collections config file",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory: config.json, metrics, checkpoints, hf/",
                               required=True)

# Flags that let XLA overlap FSDP's all-gathers and reduce-scatters with compute on GPUs (config.xla_gpu_overlap).
XLA_GPU_OVERLAP_FLAGS = ("--xla_gpu_enable_latency_hiding_scheduler=true "
                         "--xla_gpu_enable_highest_priority_async_stream=true "
                         "--xla_gpu_all_reduce_combine_threshold_bytes=134217728 "
                         "--xla_gpu_all_gather_combine_threshold_bytes=134217728 "
                         "--xla_gpu_reduce_scatter_combine_threshold_bytes=134217728")


def initialize_distributed() -> None:
    """`jax.distributed.initialize()` when this process is one of several (explicit JAX_* variables or SLURM)."""
    import jax
    if "JAX_COORDINATOR_ADDRESS" in os.environ:
        jax.distributed.initialize(num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                                   process_id=int(os.environ["JAX_PROCESS_ID"]))
    elif int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        jax.distributed.initialize()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    config = _CONFIG.value
    logging.set_verbosity(logging.WARNING)  # orbax logs every save step at INFO
    if config.xla_gpu_overlap:  # read when the backend starts, so before anything touches a device
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {XLA_GPU_OVERLAP_FLAGS}".strip()
    initialize_distributed()
    from llavao1_jax.train.loop import NonFiniteLossError, train
    try:
        train(config, _WORKDIR.value)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
