"""Where a run lives on the devices: the mesh and sharding rules from the config, and the checks on the batch layout
that must hold before anything compiles."""
from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from llavao1_jax import sharding


def rules_from_config(config: ml_collections.ConfigDict) -> tuple:
    """The logical-axis rules table of `config.sharding_rules` as the tuple `llavao1_jax.sharding` takes."""
    rules = []
    for entry in config.sharding_rules:
        if len(entry) != 2:
            raise ValueError(f"config.sharding_rules: each rule is (logical name, mesh axes), got {entry!r}")
        name, axes = entry
        axes = tuple(axes) if isinstance(axes, (list, tuple)) else axes
        for axis in (axes if isinstance(axes, tuple) else (axes,)):
            if axis is not None and axis not in sharding.MESH_AXES:
                raise ValueError(f"config.sharding_rules: rule for {name!r} names mesh axis {axis!r}; "
                                 f"the mesh axes are {sharding.MESH_AXES}")
        rules.append((name, axes))
    return tuple(rules)


def mesh_from_config(config: ml_collections.ConfigDict, devices=None) -> Mesh:
    """The ("data", "fsdp", "tensor") mesh of `config.mesh` over all devices (-1 allowed once)."""
    try:
        return sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor, devices=devices)
    except ValueError as e:
        raise ValueError(f"config.mesh: {e}") from None


def data_parallel_size(mesh: Mesh, rules) -> int:
    """How many ways the rules split the batch dimension on `mesh`."""
    axes = dict(rules).get("batch")
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    return int(np.prod([mesh.shape[a] for a in axes if a in mesh.shape]))


def check_batch_layout(config: ml_collections.ConfigDict, mesh: Mesh, rules) -> None:
    """Raises ValueError naming the config keys when the global batch cannot be split over the processes, the
    micro-batches of gradient accumulation and the data-parallel devices."""
    batch, accum = config.batch_size, config.grad_accum
    if batch <= 0 or accum <= 0:
        raise ValueError(f"config.batch_size ({batch}) and config.grad_accum ({accum}) must be positive")
    dp = data_parallel_size(mesh, rules)
    if batch % (accum * dp):
        raise ValueError(f"config.batch_size={batch} must be a multiple of config.grad_accum={accum} times the "
                         f"data-parallel size {dp} (mesh {dict(mesh.shape)}, batch sharded by the 'batch' rule)")
    if batch % jax.process_count():
        raise ValueError(f"config.batch_size={batch} must be a multiple of the number of processes "
                         f"({jax.process_count()}): each process feeds an equal share")


def initialize_distributed() -> None:
    """`jax.distributed.initialize()` when this process is one of several: JAX_COORDINATOR_ADDRESS with
    JAX_NUM_PROCESSES and JAX_PROCESS_ID set, or a SLURM allocation of several tasks (detected by JAX)."""
    if "JAX_COORDINATOR_ADDRESS" in os.environ:
        jax.distributed.initialize(num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                                   process_id=int(os.environ["JAX_PROCESS_ID"]))
    elif int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        jax.distributed.initialize()
