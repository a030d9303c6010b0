"""The LM-head matmul of decoding on this machine, in every library at hand: why batch-8 decoding stops near 2x.

A decode step multiplies a few rows (the batch) by every weight matrix; the largest is the mid config's LM head,
[M, 512] x [512, 128256] in float32 (263 MB). This times that product for M rows with:

  xla x@W    jax.jit(x @ w), the kernel as stored ([in, out]); XLA's own GEMV at M=1, YNNPACK above
  xla W^T    the same product from the transposed kernel ([out, in]), the form the engine uses for batches > 1
  torch      torch.nn.functional.linear on an [out, in] weight (oneDNN/MKL), as transformers runs it
  numpy      x @ w (numpy's BLAS)

and, as the floor, one pass over the same bytes (jnp.sum). Each column gives ms (best of --repeats) and the rate:
GB/s of weights read at M=1, GFLOP/s above. The last line fits the W^T times for M >= 2 to (a + b * M): `a` near
the stream time and `b` near a row's FLOPs at the machine's peak mean that reading and computing do not overlap.
No layout, library or XLA flag we tried changes that (see the generation issue's notes).

    python benchmarks/small_matmul.py [--rows 1 2 4 8 16 32] [--repeats 10] [--skip-torch]
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from matmul_rate import best_ms

HIDDEN, VOCAB = 512, 128256


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--skip-torch", action="store_true")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    kernel = rng.standard_normal((HIDDEN, VOCAB), dtype=np.float32)
    kernel_t = np.ascontiguousarray(kernel.T)
    w, w_t = jnp.asarray(kernel), jnp.asarray(kernel_t)
    plain = jax.jit(lambda x, w: x @ w)
    transposed = jax.jit(lambda x, w_t: jnp.einsum("vd,md->mv", w_t, x))
    stream = jax.jit(jnp.sum)
    runners = {
        "xla x@W": lambda x: plain(jnp.asarray(x), w).block_until_ready(),
        "xla W^T": lambda x: transposed(jnp.asarray(x), w_t).block_until_ready(),
        "numpy": lambda x: x @ kernel,
    }
    if not args.skip_torch:
        import torch

        weight = torch.from_numpy(kernel_t)
        runners["torch"] = lambda x: torch.nn.functional.linear(torch.from_numpy(x), weight)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ", end="")
    nbytes = kernel.nbytes
    stream_ms = best_ms(lambda: stream(w).block_until_ready(), args.repeats)
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; [M, {HIDDEN}] x [{HIDDEN}, {VOCAB}] float32, "
          f"{nbytes / 1e6:.0f} MB")
    print(f"stream floor (one jnp.sum over the weights): {stream_ms:.2f} ms = {nbytes / stream_ms / 1e6:.1f} GB/s\n")

    print(f"{'M':>3} | " + " | ".join(f"{name:>18}" for name in runners))
    batched = {}
    for m in args.rows:
        x = rng.standard_normal((m, HIDDEN), dtype=np.float32)
        times = {name: best_ms(lambda: run(x), args.repeats) for name, run in runners.items()}
        if m > 1:
            batched[m] = times["xla W^T"]
        rate = (lambda ms: f"{nbytes / ms / 1e6:5.1f} GB/s") if m == 1 else (
            lambda ms: f"{2 * m * kernel.size / ms / 1e6:4.0f} GFLOP/s")
        print(f"{m:>3} | " + " | ".join(f"{ms:6.2f} ms {rate(ms):>9}" for ms in times.values()))
    if len(batched) > 1:
        slope, intercept = np.polyfit(list(batched), list(batched.values()), 1)
        print(f"\nxla W^T, M >= 2: {intercept:.1f} ms + {slope:.2f} ms * M, i.e. a read pass at "
              f"{nbytes / intercept / 1e6:.0f} GB/s plus each row's FLOPs at {2 * kernel.size / slope / 1e6:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
