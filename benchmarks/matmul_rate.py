"""One float32 matmul timed in XLA and in torch on this machine: the line that tells whose BLAS is faster here.

Ratios against transformers depend on the CPU as much as on the code: torch's float32 matmuls go through MKL,
which runs at a fraction of XLA's rate on some CPUs (AMD) and at or above it on others (Intel with AVX-512). The
search and train-step benchmarks print this line beside their ratio, measured in the same run.

    python benchmarks/matmul_rate.py [--shape 1024 512 1536]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

SHAPE = (1024, 512, 1536)   # [M, K] x [K, N]: the mid config's MLP up-projection over a 4 x 256-token batch
REPEATS = 10


def best_ms(fn, repeats: int) -> float:
    """The fastest of `repeats` calls of `fn`, in ms, after one call to compile and warm up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def _operands(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    m, k, n = shape
    rng = np.random.default_rng(0)
    return rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)


def _gflops(shape: tuple[int, int, int], ms: float) -> float:
    m, k, n = shape
    return 2 * m * k * n / ms / 1e6


def xla_gflops(shape: tuple[int, int, int] = SHAPE) -> float:
    """GFLOP/s of `jax.jit(a @ b)` (best of REPEATS)."""
    import jax

    a, b = (jax.device_put(x) for x in _operands(shape))
    product = jax.jit(lambda x, y: x @ y)
    return _gflops(shape, best_ms(lambda: product(a, b).block_until_ready(), REPEATS))


def torch_gflops(shape: tuple[int, int, int] = SHAPE) -> float:
    """GFLOP/s of `a @ b` in torch (best of REPEATS), with torch's own thread count."""
    import torch

    a, b = (torch.from_numpy(x) for x in _operands(shape))
    return _gflops(shape, best_ms(lambda: a @ b, REPEATS))


def describe(xla: float, torch: float, shape: tuple[int, int, int] = SHAPE) -> str:
    m, k, n = shape
    return (f"this machine's float32 matmul [{m} x {k}] x [{k} x {n}]: XLA {xla:.0f} GFLOP/s, torch {torch:.0f} "
            f"GFLOP/s (XLA / torch {xla / torch:.2f}x)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=SHAPE, metavar=("M", "K", "N"))
    shape = tuple(parser.parse_args().shape)
    print(describe(xla_gflops(shape), torch_gflops(shape), shape))


if __name__ == "__main__":
    main()
