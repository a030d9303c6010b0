"""Sharding constraints on the decode state from its logical axis names.

`DecodeState` and `Generation` name their axes (`logical_axes()`), the cache arrays included ("batch", "length",
"kv_heads", "head_dim" in the order of their layout). Under an active mesh (`jax.set_mesh`), the jitted prefill,
append and decode functions constrain their outputs and the decode loop's carry through the project's rules
(`llavao1_jax.sharding`: rows over "data" x "fsdp", K/V heads over "tensor", indivisible dims replicated), so a cache
stays split the same way between steps. Without a mesh nothing changes. Parameters are placed by the model's own
loaders (`lj.load_pretrained(..., mesh=)`, `lj.init_model(..., mesh=)`).
"""
from __future__ import annotations

import jax

from llavao1_jax.sharding import DEFAULT_RULES, logical_to_spec


def constrain(tree, rules=DEFAULT_RULES):
    """`tree` (a DecodeState or Generation) with sharding constraints from its logical axes when a mesh is active."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return tree
    spec = lambda axes, x: logical_to_spec(axes, x.shape, mesh, rules)
    return jax.tree.map(lambda axes, x: jax.lax.with_sharding_constraint(x, spec(axes, x)), tree.logical_axes(), tree)
