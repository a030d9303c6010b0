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

from llavao1_jax.train.mesh import initialize_distributed

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


def run() -> None:
    """The `llavao1-train` console script."""
    app.run(main)


if __name__ == "__main__":
    run()
