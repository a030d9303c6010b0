"""Generation speed: llavao1_jax against transformers on the same weights, in the same process.

The mid-size config (about 160M parameters, real 128k vocabulary, 224-px tiles) with random weights and non-zero
gates, one 4-tile image and a 64-token prompt per row, float32 on CPU. For each batch size: time to first token,
decode tokens/second over 128 greedy tokens (min_new_tokens forces both to generate the same count), and our compile
time; then the cache size of the 11B config at batch 8 and 4096 tokens from shapes alone.

transformers runs with eager attention and with sdpa (its default); ratios are against the faster of the two. The
"head-rate" column puts the figures in context: the tokens/second of a decode step whose every matmul ran at the
measured rate of the LM-head matmul for that batch (the step's weight bytes at the head's read rate at batch 1, its
FLOPs at the head's FLOP rate at batch 8). Decoding streams every weight from memory each step, as the head does; it
is an estimate, not a strict bound (small matrices that stay in cache run faster than the head).

    python benchmarks/generate.py [--batch-sizes 1 8] [--new-tokens 128] [--repeats 3] [--skip-transformers]
        [--hf-attention eager sdpa]

Each figure is the best of --repeats runs (other processes on a shared machine only ever slow a run down).
Decode tokens/second = batch * (new_tokens - 1) / (time for new_tokens - time to first token).
"""
from __future__ import annotations

import argparse
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import llavao1_jax as lj
from llavao1_jax import inference
from llavao1_jax.model import Mllama, preset
from llavao1_jax.model.text import init_cache

FOUR_TILES = 6  # aspect ratio id of (2, 2) in the default supported ratios


GATES = ("gate", "gate_attn", "gate_ffn", "cross_attn_attn_gate", "cross_attn_mlp_gate")  # scalar tanh gates


def random_model(config, seed: int = 0) -> Mllama:
    """Random weights with the tanh gates (zero at init) drawn around 0.3, so that the image matters."""
    graphdef, state = nnx.split(lj.init_model(config, seed=seed))
    rng = np.random.default_rng(seed)

    def open_gate(path, x):
        if not any(getattr(k, "key", None) in GATES for k in path):
            return x
        return x + jnp.asarray(0.3 + 0.5 * rng.normal(size=x.shape), x.dtype)

    return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(open_gate, state))


def prompts(config, batch: int, length: int, seed: int = 0) -> dict:
    """`batch` prompts of `length` tokens, each with one 4-tile image after BOS, in the processor's format."""
    rng = np.random.default_rng(seed)
    v = config.vision
    ids = rng.integers(0, 128000, (batch, length))
    ids[:, 0], ids[:, 1] = config.text.bos_token_id, config.image_token_index
    cross = np.zeros((batch, length, 1, v.max_num_tiles), np.int64)
    cross[:, 1:] = 1
    return dict(input_ids=ids, attention_mask=np.ones((batch, length), np.int64),
                pixel_values=rng.normal(size=(batch, 1, v.max_num_tiles, 3, v.image_size, v.image_size)).astype(
                    np.float32),
                aspect_ratio_ids=np.full((batch, 1), FOUR_TILES), aspect_ratio_mask=np.ones((batch, 1, 4), np.int64),
                cross_attention_mask=cross)


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def ours(model, batch: dict, new_tokens: int, repeats: int) -> dict:
    options = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    generator = inference.Generator(model)

    def first_token():
        decoder = inference.Decoder(generator, generator.prefill(batch, max_new_tokens=new_tokens), **options)
        decoder.run(1)

    start = time.perf_counter()
    tokens = generator.generate(batch, **options).tokens  # compiles prefill and the decode loop
    first_call = time.perf_counter() - start
    first_token()
    ttft = best_of(repeats, first_token)
    total = best_of(repeats, lambda: generator.generate(batch, **options))
    return dict(ttft=ttft, total=total, compile=first_call - total, tokens=tokens)


def transformers_(hf_model, batch: dict, new_tokens: int, repeats: int) -> dict:
    import torch

    inputs = {k: torch.from_numpy(v) for k, v in batch.items()}

    def run(n):
        with torch.no_grad():
            return hf_model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)

    run(2)  # warm-up
    ttft = best_of(repeats, lambda: run(1))
    total = best_of(repeats, lambda: run(new_tokens))
    tokens = run(new_tokens)[:, batch["input_ids"].shape[1]:].numpy()
    return dict(ttft=ttft, total=total, tokens=tokens)


def head_rate_steps(model, batch_sizes, repeats: int) -> dict:
    """Per batch size, the decode step's time in seconds at the LM-head rate: the time of the head matmul for that
    batch (the faster of the kernel as stored and its transpose) scaled by (text weights read per step) / (head
    weights).
    At batch 1 that is the step's bytes at the head's read rate; at larger batches its FLOPs at the head's FLOP rate."""
    lm = model.language_model
    kernel = lm.lm_head.kernel[...]
    step_weights = sum(x.size for x in jax.tree.leaves(nnx.state(lm, nnx.Param))) - lm.embed_tokens[...].size
    operands = (kernel, jax.jit(lambda w: w.T)(kernel))
    heads = (jax.jit(lambda x, w: x @ w), jax.jit(lambda x, w_t: jnp.einsum("vd,bd->bv", w_t, x)))
    out = {}
    for b in batch_sizes:
        x = jnp.ones((b, kernel.shape[0]), kernel.dtype)
        times = []
        for head, w in zip(heads, operands):
            run = lambda: jax.block_until_ready(head(x, w))
            run()  # compile
            times.append(best_of(max(repeats, 10), run))
        out[b] = min(times) * step_weights / kernel.size
    return out


def cache_size_11b(batch: int = 8, length: int = 4096) -> str:
    lines = []
    for dtype in ("bfloat16", "float32"):
        config = preset("llama-3.2-11b-vision", dtype=dtype)
        vision_tokens = config.vision.max_num_tiles * config.vision.num_patches  # one image
        cache = jax.eval_shape(lambda: init_cache(config.text, batch, length, vision_tokens, dtype=config.dtype,
                                                  scan_layers=False))
        self_bytes = inference.cache_bytes(cache._replace(cross_k=None, cross_v=None))
        total = inference.cache_bytes(cache)
        lines.append(f"11B cache, batch {batch}, {length} tokens, one image ({vision_tokens} vision tokens), {dtype}: "
                     f"{total / 2**30:.2f} GiB (self-attention {self_bytes / 2**30:.2f} GiB, "
                     f"cross-attention {(total - self_bytes) / 2**30:.2f} GiB)")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument("--hf-attention", nargs="+", default=["eager", "sdpa"], choices=["eager", "sdpa"])
    args = parser.parse_args()

    config = preset("mid", scan_layers=False)  # the per-layer layout decoding reads
    model = random_model(config)
    params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    print(f"mid config: {params / 1e6:.0f}M parameters, float32, {jax.devices()[0].platform}, "
          f"{args.prompt_length}-token prompt with one 4-tile image, {args.new_tokens} new tokens (greedy)")
    hf_models = {}
    if not args.skip_transformers:
        import torch
        import transformers
        from transformers import MllamaForConditionalGeneration

        with tempfile.TemporaryDirectory() as directory:
            lj.save_pretrained(model, directory)
            for attention in args.hf_attention:
                hf_models[attention] = MllamaForConditionalGeneration.from_pretrained(
                    directory, attn_implementation=attention, torch_dtype=torch.float32).eval()
        print(f"transformers {transformers.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads")

    rows = []
    n = args.new_tokens
    for b in args.batch_sizes:
        batch = prompts(config, b, args.prompt_length)
        mine = ours(model, batch, n, args.repeats)
        row = dict(batch=b, ours=mine, ours_tps=b * (n - 1) / (mine["total"] - mine["ttft"]), hf={})
        for attention, hf_model in hf_models.items():
            ref = transformers_(hf_model, batch, n, args.repeats)
            ref.update(tps=b * (n - 1) / (ref["total"] - ref["ttft"]),
                       same=float(np.mean(ref["tokens"] == mine["tokens"])))
            row["hf"][attention] = ref
        rows.append(row)
    head_rate = head_rate_steps(model, args.batch_sizes, args.repeats)

    names = list(hf_models)
    print(f"\n{'batch':>5} | {'ours tok/s':>10} | " + "".join(f"{'hf ' + a:>10} | " for a in names) +
          f"{'ratio':>5} | {'head-rate tok/s':>15} | {'ours TTFT':>9} | {'hf TTFT':>8} | {'compile':>7} | same tokens")
    for r in rows:
        best = max(r["hf"].values(), key=lambda ref: ref["tps"]) if r["hf"] else None
        hf_cols = "".join(f"{r['hf'][a]['tps']:10.1f} | " for a in names)
        ratio = f"{r['ours_tps'] / best['tps']:5.2f}" if best else f"{'-':>5}"
        hf_ttft = f"{min(ref['ttft'] for ref in r['hf'].values()) * 1e3:6.0f}ms" if best else f"{'-':>8}"
        same = ", ".join(f"{a} {r['hf'][a]['same']:.1%}" for a in names) or "-"
        limit = r["batch"] / head_rate[r["batch"]]
        print(f"{r['batch']:5d} | {r['ours_tps']:10.1f} | {hf_cols}{ratio} | {limit:15.1f} | "
              f"{r['ours']['ttft'] * 1e3:7.0f}ms | {hf_ttft} | {r['ours']['compile']:6.1f}s | {same}")
    if hf_models:
        print("ratio: ours / the faster transformers attention; head-rate: see the module docstring")
    print()
    print(cache_size_11b())


if __name__ == "__main__":
    main()
