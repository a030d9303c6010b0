"""One SFT train step of llavao1_jax against transformers + torch AdamW on the same model shape.

    python benchmarks/train_step.py                      # mid config, batch 4 x 256 tokens, one 4-tile image each
    python benchmarks/train_step.py --steps 3 --seq-len 128

Half of every row's positions are supervised. Ours: the trainer's jitted step (supervised-only chunked loss, optax
AdamW, scanned layers, the remat policy of `--remat`, XLA's memory-optimised CPU scheduler as in
`configs/sft_tiny.py`) on one CPU device. Reference: `MllamaForConditionalGeneration(labels=...)` (full logits),
`loss.backward()`, `torch.optim.AdamW.step()`, sdpa attention. float32. Each side runs in its own child process, so
that its memory is its own (both read the batch and the transformers config the parent writes, so the reference's
process imports neither jax nor this package); the table gives the median step time, tokens/s (batch x length /
step time), the peak RSS of the whole child (for ours this includes XLA's compilation) and the peak RSS while the
timed steps run (Linux: /proc/self/clear_refs resets the mark after the first step), and the ratio of tokens/s;
then each child's rate of one float32 matmul (`matmul_rate.py`), since the ratio moves with the CPU's BLAS.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matmul_rate

TINY_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "sft_tiny.py"


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux


def _reset_step_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS


def _step_peak_gb() -> float:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1e6  # kB


def write_inputs(args, directory: Path) -> None:
    """The batch (`batch.npz`) and the model's transformers config (`config.json`) both children read, so that
    the reference's process imports neither jax nor this package."""
    import numpy as np

    from llavao1_jax.model import preset
    from llavao1_jax.train import data

    cfg = preset(args.preset)
    np.savez(directory / "batch.npz", **data.random_batch(cfg, args.batch, args.seq_len, supervised_fraction=0.5))
    (directory / "config.json").write_text(json.dumps(cfg.to_hf_dict()))


def time_ours(args) -> dict:
    import jax
    import numpy as np

    from llavao1_jax.train import data
    from llavao1_jax.train import mesh as train_mesh
    from llavao1_jax.train.program import build_program
    from llavao1_jax.train.state import init_train_state, model_config

    spec = importlib.util.spec_from_file_location("sft_tiny", TINY_CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()  # the trainer's fields; the model and batch set below
    config.mesh.fsdp = 1
    config.batch_size, config.loss.chunk_size = args.batch, args.chunk_size
    config.model.preset, config.model.remat = args.preset, args.remat
    config.xla_cpu_scheduler = "memory_optimized"  # one device: no collectives to order
    cfg = model_config(config)
    mesh, rules = train_mesh.mesh_from_config(config), train_mesh.rules_from_config(config)
    program = build_program(config, cfg, mesh, rules, steps_per_epoch=100, total_steps=100)
    state = init_train_state(config, cfg, program.tx, program.shardings, mesh, rules)
    local = dict(np.load(Path(args.inputs) / "batch.npz"))
    batch = data.device_batch(local, program.batch_shardings, args.chunk_size)
    times = []
    with jax.set_mesh(mesh):
        start = time.perf_counter()
        step = program.train_step.lower(state, batch).compile()
        state, m = step(state, batch)
        jax.block_until_ready(m)
        compile_s = time.perf_counter() - start
        _reset_step_peak()
        for _ in range(args.steps):
            start = time.perf_counter()
            state, m = step(state, batch)
            jax.block_until_ready(m)
            times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times), "first_call_s": compile_s, "loss": float(m["loss"]),
            "peak_rss_gb": _peak_rss_gb(), "step_peak_rss_gb": _step_peak_gb(),
            "temp_gb": step.memory_analysis().temp_size_in_bytes / 1e9, "matmul_gflops": matmul_rate.xla_gflops()}


def time_transformers(args) -> dict:
    import numpy as np
    import torch
    from transformers import MllamaConfig, MllamaForConditionalGeneration

    hf = json.loads((Path(args.inputs) / "config.json").read_text())
    config = MllamaConfig(**{k: v for k, v in hf.items() if k not in ("model_type", "architectures")})
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = MllamaForConditionalGeneration(config).float().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)
    local = np.load(Path(args.inputs) / "batch.npz")
    inputs = {k: torch.from_numpy(v.astype(np.int64) if v.dtype == np.int32 else v) for k, v in local.items()}

    def step():
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss)

    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    _reset_step_peak()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times), "first_call_s": first, "loss": loss, "peak_rss_gb": _peak_rss_gb(),
            "step_peak_rss_gb": _step_peak_gb(), "matmul_gflops": matmul_rate.torch_gflops()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="mid")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--chunk-size", type=int, default=128, help="supervised positions per row per head chunk")
    parser.add_argument("--remat", default="dots", choices=["none", "dots", "full"],
                        help="our activation checkpointing (config.model.remat): 'dots' keeps only matmul outputs")
    parser.add_argument("--steps", type=int, default=5, help="timed steps after the first")
    parser.add_argument("--only", choices=["ours", "transformers"], help=argparse.SUPPRESS)  # a child's side
    parser.add_argument("--inputs", help=argparse.SUPPRESS)  # a child's: the directory of write_inputs
    args = parser.parse_args()
    if args.only:
        result = (time_ours if args.only == "ours" else time_transformers)(args)
        print("RESULT " + json.dumps(result))
        return

    rows = {}
    with tempfile.TemporaryDirectory() as inputs:
        write_inputs(args, Path(inputs))
        for side in ("ours", "transformers"):
            child = subprocess.run([sys.executable, *sys.argv, "--only", side, "--inputs", inputs], capture_output=True,
                                   text=True, check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
            rows[side] = json.loads(child.stdout.rsplit("RESULT ", 1)[1])
    tokens = args.batch * args.seq_len
    print(f"\ntrain step, preset={args.preset}, batch {args.batch} x {args.seq_len} tokens, one 4-tile image per "
          f"row, half supervised, float32, CPU; ours: remat={args.remat}, chunk size {args.chunk_size}")
    print(f"{'implementation':<34}{'s/step':>8}{'tokens/s':>10}{'peak RSS GB':>13}{'in steps GB':>13}"
          f"{'first step s':>14}")
    names = {"ours": "llavao1_jax (jit, optax AdamW)", "transformers": "transformers + torch AdamW"}
    for side, r in rows.items():
        print(f"{names[side]:<34}{r['seconds']:>8.2f}{tokens / r['seconds']:>10.0f}{r['peak_rss_gb']:>13.2f}"
              f"{r['step_peak_rss_gb']:>13.2f}{r['first_call_s']:>14.1f}")
    print(f"our compiled step's temporaries (XLA memory analysis): {rows['ours']['temp_gb']:.2f} GB")
    print(f"tokens/s ratio (ours / transformers): {rows['transformers']['seconds'] / rows['ours']['seconds']:.2f}x")
    print(matmul_rate.describe(rows["ours"]["matmul_gflops"], rows["transformers"]["matmul_gflops"]))


if __name__ == "__main__":
    main()
