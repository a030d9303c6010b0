"""Prefill (full forward) time of llavao1_jax against transformers on the same weights, in one process.

    python benchmarks/forward.py                 # mid config (~160M params, real vocabulary), float32, CPU
    python benchmarks/forward.py --preset tiny --repeats 3
    python benchmarks/forward.py --preset llama-3.2-11b-vision --dtype bfloat16 --skip-reference   # on a GPU

One 4-tile image and `--text-tokens` text tokens per sample. Ours is jitted and timed after a warm-up call;
transformers runs in eager and sdpa attention. Prints a table and the ratio against the faster transformers run.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import jax
import numpy as np
from flax import nnx

import llavao1_jax as lj
from llavao1_jax.model import preset


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_inputs(cfg, batch: int, text_tokens: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    v = cfg.vision
    ids = rng.integers(0, 128000, (batch, text_tokens))
    ids[:, 0] = cfg.image_token_index
    return dict(input_ids=ids, attention_mask=np.ones_like(ids),
                pixel_values=rng.normal(size=(batch, 1, 4, 3, v.image_size, v.image_size)).astype(np.float32),
                aspect_ratio_ids=np.full((batch, 1), 6), aspect_ratio_mask=np.ones((batch, 1, 4), np.int64),
                cross_attention_mask=np.ones((batch, text_tokens, 1, 4), np.int64))


def with_open_gates(model: lj.Mllama, value: float = 0.5) -> lj.Mllama:
    """Random init zeroes the gates; open them so that the image really flows through both models."""
    graphdef, state = nnx.split(model)
    gates = ("gate", "gate_attn", "gate_ffn", "cross_attn_attn_gate", "cross_attn_mlp_gate")
    is_gate = lambda path: any(getattr(k, "key", None) in gates for k in path)
    state = jax.tree_util.tree_map_with_path(lambda path, x: x + value if is_gate(path) else x, state)
    return nnx.merge(graphdef, state)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="mid")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--text-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--attention", default="xla", choices=["xla", "cudnn"], help="attention_impl of our model")
    parser.add_argument("--skip-reference", action="store_true", help="time llavao1_jax alone (e.g. the 11B preset)")
    args = parser.parse_args()

    cfg = preset(args.preset, dtype=args.dtype, param_dtype=args.dtype, attention_impl=args.attention)
    ours = with_open_gates(lj.init_model(cfg, seed=0))
    params = sum(x.size for x in jax.tree.leaves(nnx.state(ours, nnx.Param)))
    inputs = make_inputs(cfg, args.batch, args.text_tokens)
    rows = []

    start = time.perf_counter()
    ours_logits = np.asarray(ours(**inputs))
    compile_s = time.perf_counter() - start
    ours_s = median_seconds(lambda: ours(**inputs).block_until_ready(), args.repeats)
    rows.append(("llavao1_jax (jit)", ours_s))
    rel_diff = {} if args.skip_reference else time_transformers(ours, inputs, ours_logits, args, rows)

    print(f"\nprefill, preset={args.preset} ({params / 1e6:.0f}M params), batch={args.batch}, one 4-tile "
          f"{cfg.vision.image_size}px image, {args.text_tokens} text tokens, {args.dtype}, {args.attention} attention, "
          f"{jax.devices()[0].device_kind}")
    print(f"{'implementation':<24}{'median ms':>12}{'vs ours':>10}")
    for name, s in rows:
        print(f"{name:<24}{s * 1e3:>12.1f}{s / ours_s:>9.2f}x")
    print(f"llavao1_jax compile + first call: {compile_s:.1f} s")
    if rel_diff:
        print("max |logit diff| / max |logit| vs transformers: " + ", ".join(f"{k} {v:.1e}" for k, v in rel_diff.items()))
        print(f"speed-up over the faster transformers run: {min(s for _, s in rows[1:]) / ours_s:.2f}x")


def time_transformers(ours, inputs, ours_logits, args, rows) -> dict:
    """Times transformers (eager and sdpa) on our weights, appending to `rows`; returns the relative logit gaps."""
    import torch
    from transformers import MllamaForConditionalGeneration

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, args.dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rel_diff = {}
    with tempfile.TemporaryDirectory() as tmp:
        lj.save_pretrained(ours, tmp)
        torch_inputs = {k: torch.from_numpy(np.asarray(v)).to(device) for k, v in inputs.items()}
        torch_inputs["pixel_values"] = torch_inputs["pixel_values"].to(dtype)
        for impl in ("eager", "sdpa"):
            ref = MllamaForConditionalGeneration.from_pretrained(tmp, attn_implementation=impl, torch_dtype=dtype)
            ref = ref.to(device).eval()
            with torch.no_grad():
                ref_logits = ref(**torch_inputs).logits.float().cpu().numpy()
                rel_diff[impl] = float(np.abs(ref_logits - ours_logits).max() / np.abs(ref_logits).max())

                def call():
                    ref(**torch_inputs)
                    sync()

                rows.append((f"transformers ({impl})", median_seconds(call, args.repeats)))
            del ref
    return rel_diff


if __name__ == "__main__":
    main()
