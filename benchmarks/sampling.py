"""Sampling speed: the decode step with greedy choice, temperature sampling, and temperature + top-p, against greedy.

    python benchmarks/sampling.py [--rows 1 4 16 32] [--steps 32] [--repeats 3] [--peak 8] [--profile-rows 32]

The model and prompts of benchmarks/generate.py (mid config, float32, one 4-tile image, 64-token prompt per row).
"flat" logits are the random model's (the nucleus at temperature 0.6 and top_p 0.9 holds about 90k of the 128k
tokens); "peaked" ones come from the same model with its LM head scaled by --peak (8: the most likely token has
about 30% of the mass and the nucleus some 25 tokens, like a trained model's). For each row count and both kinds of
logits: the decode step in ms (the best of --repeats runs of --steps steps in one decode call, after a first step;
no stop tokens), and the choice alone, `next_tokens` jitted on the prefill's logits (the mean over 16 calls with
fresh keys, best of --repeats). Ratios are against greedy in the same run.

With --profile-rows, the decode step at that row count runs under `jax.profiler` (on flat logits) and its XLA op time
per step is split into choosing the token (ops from `next_tokens`) and the rest (the model, the cache, stops).
"""
from __future__ import annotations

import decode_profile  # sets the profiler's XLA flag before jax starts

import argparse
import tempfile
import time

import jax
import jax.numpy as jnp
from flax import nnx

from generate import prompts, random_model
from llavao1_jax import inference
from llavao1_jax.inference import engine
from llavao1_jax.inference.sampling import SamplingConfig, next_tokens
from llavao1_jax.model import preset

MODES = {"greedy": {}, "T=0.6": dict(do_sample=True, temperature=0.6),
         "T=0.6 top_p=0.9": dict(do_sample=True, temperature=0.6, top_p=0.9)}
CHOICE_CALLS = 16


def peaked(model, scale: float):
    """A copy of `model` whose LM head, and so its logits, are multiplied by `scale`."""
    copy = nnx.merge(*nnx.split(model))
    head = copy.language_model.lm_head.kernel
    head[...] = head[...] * scale
    return copy


def decoder(generator: inference.Generator, batch: dict, steps: int, mode: dict) -> inference.Decoder:
    """A decoder for `steps` + 1 tokens (no stop tokens) that has run its first step."""
    state = generator.prefill(batch, max_new_tokens=steps + 1)
    out = inference.Decoder(generator, state, max_new_tokens=steps + 1, stop_token_ids=(), **mode)
    out.run(1)
    return out


def step_ms(generator: inference.Generator, batch: dict, steps: int, repeats: int, mode: dict) -> float:
    """ms per decode step, the best of `repeats` runs of `steps` steps (the first run compiles)."""
    times = []
    for _ in range(repeats + 1):
        running = decoder(generator, batch, steps, mode)
        start = time.perf_counter()
        running.run(steps)  # returns after reading the finish reasons: the steps are done
        times.append(time.perf_counter() - start)
    return min(times[1:]) / steps * 1e3


def choice_ms(logits: jax.Array, repeats: int, mode: dict) -> float:
    """ms per `next_tokens` call on logits [B, V], the mean over CHOICE_CALLS key sets, best of `repeats`."""
    choose = jax.jit(next_tokens, static_argnums=2)
    config = SamplingConfig(**mode)
    keys = [jax.random.split(jax.random.PRNGKey(i), logits.shape[0]) for i in range(CHOICE_CALLS)]
    jax.block_until_ready(choose(logits, keys[0], config))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready([choose(logits, k, config) for k in keys])
        times.append((time.perf_counter() - start) / CHOICE_CALLS)
    return min(times) * 1e3


def profile_split(generator: inference.Generator, batch: dict, steps: int, mode: dict) -> tuple[float, float]:
    """(choosing, the rest) in XLA op ms per decode step, from a profiled run of `steps` steps."""
    running = decoder(generator, batch, steps, mode)
    graphdef, params, head = generator.decoding_model
    compiled = engine.decode.lower(graphdef, running.sampling, params, head, running.state, running.gen,
                                   running.stopping, jnp.asarray(steps, jnp.int32)).compile().as_text()
    sources = {}
    for line in compiled.splitlines():
        match = decode_profile.HLO_OP.match(line)
        if match:
            source = decode_profile.SOURCE.search(line)
            sources[match[1]] = source[1] if source else ""
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        running.run(steps)
        jax.profiler.stop_trace()
        times = decode_profile.op_times(trace_dir)
    choosing = sum(ns for name, ns in times.items() if "next_tokens" in sources.get(name, ""))
    return choosing / 1e6 / steps, (sum(times.values()) - choosing) / 1e6 / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peak", type=float, default=8.0, help="LM-head scale of the peaked model")
    parser.add_argument("--profile-rows", type=int, default=0, help="profile the step at this row count (0: no)")
    args = parser.parse_args()

    config = preset("mid", scan_layers=False)
    flat = random_model(config)
    generators = {"flat": inference.Generator(flat), "peaked": inference.Generator(peaked(flat, args.peak))}
    print(f"mid config ({config.text.vocab_size} vocabulary, hidden {config.text.hidden_size}), float32, "
          f"{jax.devices()[0].platform}; decode step and choice alone in ms, ratio to greedy; "
          f"peaked: LM head x {args.peak:g}")
    names = list(MODES)
    header = " | ".join(f"{n:>15} {'ratio':>5}" for n in names)
    for what in ("decode step", "choice alone"):
        print(f"\n{what}\n{'logits':>6} | {'rows':>4} | {header}")
        for kind, generator in generators.items():
            for rows in args.rows:
                batch = prompts(config, rows, 64)
                if what == "decode step":
                    ms = [step_ms(generator, batch, args.steps, args.repeats, MODES[n]) for n in names]
                else:
                    logits = generator.prefill(batch, max_new_tokens=1).logits
                    ms = [choice_ms(logits, args.repeats, MODES[n]) for n in names]
                print(f"{kind:>6} | {rows:4d} | " + " | ".join(f"{m:15.2f} {m / ms[0]:5.2f}" for m in ms),
                      flush=True)
    if args.profile_rows:
        batch = prompts(config, args.profile_rows, 64)
        print(f"\nprofile, flat logits, {args.profile_rows} rows: XLA op ms per step")
        for name in names:
            choosing, rest = profile_split(generators["flat"], batch, args.steps, MODES[name])
            print(f"{name:>15}: choosing {choosing:6.2f} | model and the rest {rest:6.2f}")


if __name__ == "__main__":
    main()
