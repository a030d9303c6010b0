"""Device meshes and the logical-axis rules that place parameters, caches, batches and activations on them.

Parameters carry logical axis names ("embed", "mlp", "heads", "vocab", "layers", ...); one rules table maps each
name to a mesh axis (maxtext's `logical_axis_rules`). A dimension that the mesh axis does not divide stays
replicated, so the same rules serve the tiny test model and the 11B model.
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Default: FSDP over parameters' model dimension, tensor parallelism over heads/MLP/vocab, batch over data x fsdp.
DEFAULT_RULES: tuple[tuple[str, Optional[str | tuple[str, ...]]], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("vision_embed", "fsdp"),
    ("vision_out", "fsdp"),
    ("mlp", "tensor"),
    ("vision_mlp", "tensor"),
    ("heads", "tensor"),
    ("vision_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("vocab", "tensor"),
    ("layers", None),
    ("length", None),
    ("head_dim", None),
)


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1, devices: Optional[Sequence] = None) -> Mesh:
    """A ("data", "fsdp", "tensor") mesh; -1 takes the devices the other two leave."""
    n = len(devices) if devices is not None else jax.device_count()
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError("at most one mesh axis may be -1")
    if -1 in sizes:
        rest = int(np.prod([s for s in sizes if s != -1]))
        if n % rest:
            raise ValueError(f"{n} devices cannot be split into data={data}, fsdp={fsdp}, tensor={tensor}")
        sizes[sizes.index(-1)] = n // rest
    if int(np.prod(sizes)) != n:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, have {n}")
    return jax.make_mesh(tuple(sizes), MESH_AXES, devices=devices,
                         axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(names: Sequence[Optional[str]], shape: Sequence[int], mesh: Mesh,
                    rules=DEFAULT_RULES) -> PartitionSpec:
    """PartitionSpec for an array with logical axis `names`; indivisible dims and reused mesh axes stay replicated."""
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for name, dim in zip(names, shape):
        target = table.get(name) if name is not None else None
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        axes = tuple(a for a in axes if a in mesh.shape and a not in used)
        size = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
        if not axes or size == 1 or dim % size:
            spec.append(None)
            continue
        used.update(axes)
        spec.append(axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*spec)


def state_shardings(abstract_state: nnx.State, mesh: Mesh, rules=DEFAULT_RULES) -> nnx.State:
    """NamedShardings for every variable of an (abstract) NNX state, from its `out_sharding` logical names."""

    def one(var):
        names = var.get_metadata().get("out_sharding") or (None,) * len(var.shape)
        return NamedSharding(mesh, logical_to_spec(names, var.shape, mesh, rules))

    return jax.tree.map(one, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def array_sharding(logical_axes: Sequence[Optional[str]], shape: Sequence[int], mesh: Mesh,
                   rules=DEFAULT_RULES) -> NamedSharding:
    """NamedSharding for a plain array (a batch, a cache) described by logical axis names."""
    return NamedSharding(mesh, logical_to_spec(logical_axes, shape, mesh, rules))


def constrain(x: jax.Array, logical_axes: Sequence[Optional[str]], rules) -> jax.Array:
    """`x` under a sharding constraint from its logical axis names and `rules`, on the mesh that `jax.set_mesh` set
    around the trace; `x` itself when `rules` is None or no mesh is set (a single device, or decoding)."""
    mesh = jax.sharding.get_abstract_mesh()
    if rules is None or mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(logical_axes, x.shape, mesh, rules))
