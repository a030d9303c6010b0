"""The model as the decoding engine reads it: the per-layer text layout, split for `jax.jit`, plus one derived
array (a CPU-only copy of the LM head).

Decoding wants the per-layer layout (`MllamaConfig.scan_layers=False`, see model/text.py: over a scanned stack XLA
copies every layer's weights out of the stack every step). A scanned model is converted once with
`relayout` (a copy of its text weights, announced by a warning) and the conversion is kept per source model while
the source's parameter arrays are unchanged (replacing any of them, e.g. `nnx.update`, converts again).

On CPU the engine also keeps the LM head kernel transposed, [vocab, hidden]: XLA's CPU GEMM of a few rows against
the [hidden, vocab] kernel runs well below the memory bandwidth (mid config, 8 rows: 17.7 ms with the copy vs
24-27 ms per head matmul), while one row is fastest against the kernel as stored. Batches of several rows use the
copy, one row the model's kernel. It is an engine-side derived array, not part of the model.
"""
from __future__ import annotations

import warnings
import weakref
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

class _Prepared(NamedTuple):
    variables: tuple  # the source model's Variables
    values: tuple  # the arrays they held when it was prepared
    decoding_model: DecodingModel


_PREPARED: "weakref.WeakKeyDictionary[Mllama, _Prepared]" = weakref.WeakKeyDictionary()


def prepare(model: Mllama) -> DecodingModel:
    """`model` in decoding form. A scanned model is converted to the per-layer layout (with a warning: that copies
    its text weights).

    Cached per model object, and rebuilt when any of its Variables holds a new array (`nnx.update`, a training step):
    the check reads the Variables found when the model was first prepared, which costs microseconds where walking the
    module graph costs 10 ms (mid config) to 100 ms (11B) per call. Structural edits (assigning a new submodule or
    Variable to the model) are therefore not seen: re-create the model, e.g. `nnx.merge(*nnx.split(model))`.
    """
    cached = _PREPARED.get(model)
    if cached is not None and all(var.get_raw_value() is value for var, value in zip(cached.variables,
                                                                                     cached.values)):
        return cached.decoding_model
    variables = tuple(node for _, node in nnx.iter_graph(model) if isinstance(node, nnx.Variable))
    if model.config.scan_layers:
        warnings.warn("decoding needs the per-layer text layout: made a per-layer copy of this scanned model's text "
                      "weights (kept while its parameters are unchanged). Load with "
                      "lj.load_pretrained(dir, scan_layers=False) (or convert with "
                      "llavao1_jax.model.relayout(model, scan_layers=False)) to avoid the copy.", stacklevel=3)
        model_for_decoding = relayout(model, scan_layers=False)
    else:
        model_for_decoding = model
    graphdef, params = nnx.split(model_for_decoding)
    kernel = model_for_decoding.language_model.lm_head.kernel[...]
    on_cpu = all(d.platform == "cpu" for d in kernel.devices())
    prepared = DecodingModel(graphdef, params, _transpose(kernel) if on_cpu else None)
    _PREPARED[model] = _Prepared(variables, tuple(var.get_raw_value() for var in variables), prepared)
    return prepared


def head_logits(model: Mllama, head_t: Optional[jax.Array], hidden: jax.Array) -> jax.Array:
    """LM head logits [B, S, vocab] in the compute dtype, from the [vocab, hidden] copy when there is one and the
    batch has several rows (traceable)."""
    if head_t is None or hidden.shape[0] == 1:
        return model.language_model.logits(hidden)
    dtype = model.language_model.dtype
    return jnp.einsum("vd,bsd->bsv", head_t.astype(dtype), hidden.astype(dtype))
