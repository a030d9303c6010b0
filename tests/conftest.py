"""Test setup: 8 fake CPU devices (set before jax is imported), float32 matmuls at full precision, and `gpu` tests
skipped unless JAX runs on a GPU (JAX_PLATFORMS=cuda)."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

from absl import flags  # noqa: E402

# The test process stands in for a program started by absl.app: Grain's worker processes read absl flags.
flags.FLAGS.mark_as_parsed()


def pytest_collection_modifyitems(config, items):
    if jax.default_backend() == "gpu":
        return
    skip = pytest.mark.skip(reason=f"needs an NVIDIA GPU; JAX runs on {jax.default_backend()} "
                                   "(run with JAX_PLATFORMS=cuda python -m pytest -m gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
