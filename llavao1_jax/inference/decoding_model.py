"""The model as the decoding engine reads it: the per-layer text layout, split for `jax.jit`, plus one derived
array (a CPU-only copy of the LM head).

Decoding wants the per-layer layout (`MllamaConfig.scan_layers=False`, see model/text.py): over a scanned stack XLA
copies every layer's weights out of the stack every step. A scanned model is converted with `relayout` (a copy of
its text weights, announced by a warning).

On CPU the engine also keeps the LM head kernel transposed, [vocab, hidden]: XLA's CPU GEMM of a few rows runs
faster against it than against the [hidden, vocab] kernel, while one row is fastest against the kernel as stored
(benchmarks/README.md has the figures). Batches of several rows use the copy, one row the model's kernel. It is an
engine-side derived array, not part of the model.
"""
from __future__ import annotations

import warnings
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
from flax import nnx

from llavao1_jax.model.mllama import Mllama, relayout


class DecodingModel(NamedTuple):
    """What the jitted engine functions take: `graphdef` (static) and `params` from `nnx.split` of a per-layer
    model, and `head_t`, the [vocab, hidden] LM head kernel on CPU (else None)."""

    graphdef: Any
    params: nnx.State
    head_t: Optional[jax.Array]


_transpose = jax.jit(lambda a: a.T)


def prepare(model: Mllama) -> DecodingModel:
    """`model` in decoding form: its own arrays when it has the per-layer layout, else a per-layer copy of its text
    weights (with a warning); plus the CPU LM-head copy. `Generator` calls this once and keeps the result."""
    if model.config.scan_layers:
        warnings.warn("decoding needs the per-layer text layout: made a per-layer copy of this scanned model's text "
                      "weights. Load with lj.load_pretrained(dir, scan_layers=False) (or convert with "
                      "llavao1_jax.model.relayout(model, scan_layers=False)) to avoid the copy.", stacklevel=3)
        model = relayout(model, scan_layers=False)
    graphdef, params = nnx.split(model)
    params = jax.tree.map(lambda a: a, params)  # new Variables over the same arrays: later model updates do not leak in
    kernel = model.language_model.lm_head.kernel[...]
    on_cpu = all(d.platform == "cpu" for d in kernel.devices())
    return DecodingModel(graphdef, params, _transpose(kernel) if on_cpu else None)


def head_logits(model: Mllama, head_t: Optional[jax.Array], hidden: jax.Array) -> jax.Array:
    """LM head logits [B, S, vocab] in the compute dtype, from the [vocab, hidden] copy when there is one and the
    batch has several rows (traceable)."""
    if head_t is None or hidden.shape[0] == 1:
        return model.language_model.logits(hidden)
    dtype = model.language_model.dtype
    return jnp.einsum("vd,bsd->bsv", head_t.astype(dtype), hidden.astype(dtype))
