"""One SFT train step of llavao1_jax against transformers + torch AdamW on the same model shape.

    python benchmarks/train_step.py                      # mid config, batch 4 x 256 tokens, one 4-tile image each
    python benchmarks/train_step.py --steps 3 --seq-len 128
    python benchmarks/train_step.py --platform gpu --preset llama-3.2-11b-vision --text-layers 5 --vision-layers 5 \
        --global-layers 2 --dtype bfloat16 --attention cudnn --remat full --batch 8 --seq-len 1024 --peak-tflops 989

Half of every row's positions are supervised. Ours: the trainer's jitted step (supervised-only chunked loss, optax
AdamW, scanned layers, the remat policy of `--remat`, XLA's memory-optimised CPU scheduler as in
`configs/sft_tiny.py`) on one CPU device. Reference: `MllamaForConditionalGeneration(labels=...)` (full logits),
`loss.backward()`, `torch.optim.AdamW.step()`, sdpa attention. float32. Each side runs in its own child process, so
that its memory is its own (both read the batch and the transformers config the parent writes, so the reference's
process imports neither jax nor this package); the table gives the median step time, tokens/s (batch x length /
step time), the peak RSS of the whole child (for ours this includes XLA's compilation) and the peak RSS while the
timed steps run (Linux: /proc/self/clear_refs resets the mark after the first step), and the ratio of tokens/s;
then each child's rate of one float32 matmul (`matmul_rate.py`), since the ratio moves with the CPU's BLAS.

On a GPU (`--platform gpu`, ours alone): a slice of a preset (`--text-layers`, `--vision-layers`,
`--global-layers`: fewer layers at the real widths) in `--dtype bfloat16` with `--attention cudnn`, its device
memory peak and, with `--peak-tflops`, its model FLOPs utilisation (6 x parameters x tokens a step, as the
trainer's MFU).
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


def sliced(cfg, text_layers: int, vision_layers: int, global_layers: int):
    """`cfg` with fewer layers at the same widths (0 keeps a count): the text model keeps the cross-attention layers
    below `text_layers` (at least its last layer), the vision tower its number of intermediate outputs."""
    import dataclasses

    text, vision = cfg.text, cfg.vision
    if text_layers:
        cross = tuple(i for i in text.cross_attention_layers if i < text_layers) or (text_layers - 1,)
        text = dataclasses.replace(text, num_hidden_layers=text_layers, cross_attention_layers=cross)
    if vision_layers:
        count = len(vision.intermediate_layers_indices)
        if vision_layers < count:
            raise SystemExit(f"--vision-layers must be at least {count} (the tower's intermediate outputs)")
        vision = dataclasses.replace(vision, num_hidden_layers=vision_layers,
                                     intermediate_layers_indices=tuple(range(vision_layers - count, vision_layers)))
    if global_layers:
        vision = dataclasses.replace(vision, num_global_layers=global_layers)
    return cfg.replace(text=text, vision=vision)


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
    config.model.dtype, config.model.attention_impl = args.dtype, args.attention
    if args.platform == "cpu":
        config.xla_cpu_scheduler = "memory_optimized"  # one device: no collectives to order
    cfg = sliced(model_config(config), args.text_layers, args.vision_layers, args.global_layers)
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
            "temp_gb": step.memory_analysis().temp_size_in_bytes / 1e9,
            "params": sum(int(np.prod(a.shape)) for a in jax.tree.leaves(program.abstract_params)),
            "device_peak_gb": (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use", 0) / 1e9,
            "matmul_gflops": matmul_rate.xla_gflops() if args.platform == "cpu" else None}


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
    parser.add_argument("--platform", default="cpu", choices=["cpu", "gpu"],
                        help="where ours runs; gpu (or a slice) skips the reference")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="our compute dtype")
    parser.add_argument("--attention", default="xla", choices=["xla", "cudnn"], help="our attention_impl")
    parser.add_argument("--text-layers", type=int, default=0, help="a slice: this many text layers (0: all)")
    parser.add_argument("--vision-layers", type=int, default=0, help="a slice: this many local vision layers")
    parser.add_argument("--global-layers", type=int, default=0, help="a slice: this many global vision layers")
    parser.add_argument("--peak-tflops", type=float, default=0.0,
                        help="the device's peak (989 for an H100 in bfloat16): prints model FLOPs utilisation")
    parser.add_argument("--only", choices=["ours", "transformers"], help=argparse.SUPPRESS)  # a child's side
    parser.add_argument("--inputs", help=argparse.SUPPRESS)  # a child's: the directory of write_inputs
    args = parser.parse_args()
    if args.only:
        result = (time_ours if args.only == "ours" else time_transformers)(args)
        print("RESULT " + json.dumps(result))
        return

    # transformers runs the whole model on the CPU only
    against_transformers = args.platform == "cpu" and not (args.text_layers or args.vision_layers or args.global_layers)
    rows = {}
    with tempfile.TemporaryDirectory() as inputs:
        write_inputs(args, Path(inputs))
        for side in ("ours", "transformers") if against_transformers else ("ours",):
            child = subprocess.run([sys.executable, *sys.argv, "--only", side, "--inputs", inputs], capture_output=True,
                                   text=True, check=True, env={**os.environ, "JAX_PLATFORMS": args.platform})
            rows[side] = json.loads(child.stdout.rsplit("RESULT ", 1)[1])
    tokens = args.batch * args.seq_len
    print(f"\ntrain step, preset={args.preset} ({rows['ours']['params'] / 1e6:.0f}M params), batch {args.batch} x "
          f"{args.seq_len} tokens, one 4-tile image per row, half supervised, {args.dtype}, {args.platform}; ours: "
          f"remat={args.remat}, chunk size {args.chunk_size}, {args.attention} attention")
    print(f"{'implementation':<34}{'s/step':>8}{'tokens/s':>10}{'peak RSS GB':>13}{'in steps GB':>13}"
          f"{'first step s':>14}")
    names = {"ours": "llavao1_jax (jit, optax AdamW)", "transformers": "transformers + torch AdamW"}
    for side, r in rows.items():
        print(f"{names[side]:<34}{r['seconds']:>8.2f}{tokens / r['seconds']:>10.0f}{r['peak_rss_gb']:>13.2f}"
              f"{r['step_peak_rss_gb']:>13.2f}{r['first_call_s']:>14.1f}")
    ours = rows["ours"]
    print(f"our compiled step's temporaries (XLA memory analysis): {ours['temp_gb']:.2f} GB")
    if args.platform == "gpu":
        print(f"our device's peak memory: {ours['device_peak_gb']:.2f} GB")
    if args.peak_tflops:
        mfu = 6 * ours["params"] * tokens / ours["seconds"] / (args.peak_tflops * 1e12)
        print(f"model FLOPs utilisation (6 x params x tokens / step time / peak): {mfu:.1%}")
    if "transformers" in rows:
        print(f"tokens/s ratio (ours / transformers): {rows['transformers']['seconds'] / ours['seconds']:.2f}x")
        print(matmul_rate.describe(ours["matmul_gflops"], rows["transformers"]["matmul_gflops"]))


if __name__ == "__main__":
    main()
