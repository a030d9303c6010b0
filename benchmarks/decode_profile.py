"""Where a decode step's time goes: the XLA ops of our decode loop, timed by the profiler, per step.

    python benchmarks/decode_profile.py [--batch 8] [--steps 64] [--room 0] [--top 12]

The model and prompts of benchmarks/generate.py (mid config, float32, one 4-tile image, 64-token prompt). One
prefill (with `--room` cache slots beyond the steps, for a longer cache), then `--steps` greedy steps in one decode
call under `jax.profiler`; each XLA op's time is summed over the steps and divided by their number, and named by its
output shape and the operation it came from. Ops on the two CPU threads may overlap, so the op times can add up to a
little more than the step. Groups: the LM head (the op whose output is [batch, vocab]), the other matmuls (dots and
the matmul library's fusions, reductions included), the rest.
"""
from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true"  # before jax

import argparse
import collections
import glob
import re
import tempfile
import time

import jax
import jax.numpy as jnp

from generate import prompts, random_model
from llavao1_jax import inference
from llavao1_jax.inference import engine
from llavao1_jax.model import preset

HLO_OP = re.compile(r"^\s*(?:ROOT )?%(\S+) = (\S+) ([\w-]+)\(")
SOURCE = re.compile(r'op_name="([^"]*)"')


def hlo_ops(compiled_text: str) -> dict[str, tuple[str, str, str]]:
    """XLA op name -> (output shape, opcode, the full op_name of the operation it came from, '' where XLA kept none)
    from optimized HLO text."""
    out = {}
    for line in compiled_text.splitlines():
        match = HLO_OP.match(line)
        if match:
            source = SOURCE.search(line)
            out[match[1]] = (match[2], match[3], source[1] if source else "")
    return out


def op_descriptions(compiled_text: str) -> dict[str, str]:
    """XLA op name -> 'output shape, opcode, source operation (where XLA kept it)' from optimized HLO text."""
    return {name: f"{shape:<22} {opcode:<7} {source.split('/')[-1]}"
            for name, (shape, opcode, source) in hlo_ops(compiled_text).items()}


def op_times(trace_dir: str) -> collections.Counter:
    """Total nanoseconds per XLA op name over the CPU executor threads of the trace in `trace_dir`."""
    path = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))[-1]
    times = collections.Counter()
    for plane in jax.profiler.ProfileData.from_file(path).planes:
        for line in plane.lines:
            if line.name.startswith("tf_XLAEigen"):
                for event in line.events:
                    if event.name != "ThunkExecutor::Execute" and not event.name.startswith("SlinkyThreadPool"):
                        times[event.name] += event.duration_ns
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--room", type=int, default=0, help="extra cache slots (a longer self-attention cache)")
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()

    config = preset("mid", scan_layers=False)
    model = random_model(config)
    batch = prompts(config, args.batch, 64)
    options = dict(max_new_tokens=args.steps, min_new_tokens=args.steps)

    generator = inference.Generator(model)

    def decoder():
        state = generator.prefill(batch, max_new_tokens=args.steps + args.room)
        return inference.Decoder(generator, jax.block_until_ready(state), **options)

    warm = decoder()
    graphdef, params, head = generator.decoding_model
    compiled = engine.decode.lower(graphdef, warm.sampling, params, head, warm.state, warm.gen, warm.stopping,
                                   jnp.asarray(args.steps, jnp.int32)).compile().as_text()
    warm.run()
    timed = decoder()
    start = time.perf_counter()
    timed.run()
    step_ms = (time.perf_counter() - start) / args.steps * 1e3

    profiled = decoder()
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        profiled.run()
        jax.profiler.stop_trace()
        times = op_times(trace_dir)
    described = op_descriptions(compiled)
    per_step = {name: ns / 1e6 / args.steps for name, ns in times.items()}
    vocab = config.text.vocab_size
    matmul = [n for n in per_step if n.startswith(("dot", "ynn_fusion"))]
    head = [n for n in matmul if re.match(rf"f32\[{args.batch},(1,)?{vocab}\]", described.get(n, ""))]
    matmul = [n for n in matmul if n not in head]
    grouped = {"LM head": head, "other matmuls": matmul,
               "rest": [n for n in per_step if n not in head and n not in matmul]}

    print(f"mid config, float32, batch {args.batch}, cache of {warm.state.max_length} slots, "
          f"{jax.devices()[0].platform}: {step_ms:.1f} ms per decode step (op times add up to "
          f"{sum(per_step.values()):.1f} ms)")
    print("  " + " | ".join(f"{group} {sum(per_step[n] for n in names):.1f} ms" for group, names in grouped.items()))
    print(f"\n{'ms/step':>8}  {'op':<16} {'output':<22} {'opcode':<7} source")
    for name, ms in sorted(per_step.items(), key=lambda item: -item[1])[:args.top]:
        print(f"{ms:8.3f}  {name:<16} {described.get(name, '')}")


if __name__ == "__main__":
    main()
