"""Test setup: 8 fake CPU devices (set before jax is imported) and float32 matmuls at full precision."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

from absl import flags  # noqa: E402

# The test process stands in for a program started by absl.app: Grain's worker processes read absl flags.
flags.FLAGS.mark_as_parsed()
