"""The model in decoding layout: text layers as separate per-layer arrays, run one after another.

The model stacks the parameters of layers of one kind and scans over them (one trace whatever the depth, right for
training). Decoding reads every weight once per token, and there the stack costs: XLA copies each layer's weights out
of the stack before its matmuls (a dynamic or static slice is a copy on CPU), so a step moves the weights three times.
Measured per decode step of the text decoder at batch 1: mid config on CPU 84 ms scanned vs 7.4 ms unrolled over
per-layer arrays; 11B config in bfloat16 on one H100 24.8 ms vs 9.6 ms.

`split(model)` therefore unstacks the text layers once per model (a copy of their weights, cached while the model's
parameters are unchanged) and `Network` runs them unrolled with a per-layer cache: `KVCache` whose fields are tuples
of [B, L, KV, hd] arrays (self, written one slot per step) and [B, KV, hd, vision_tokens] arrays (cross, read-only
after prefill, stored in the layout the attention dots read: in the layers' layout XLA copies a transposed cross K
and V every step, 5 ms of a 45 ms step for the mid config at batch 8). Everything else is the model's own code:
`Network` borrows `Mllama.encode_images`/`cross_inputs` and `TextDecoder.__call__`, and only replaces the layer
scan (`_run_blocks`) by the unrolled loop over the model's own layer modules.

On CPU the LM head also gets a [vocab, hidden] copy: XLA's CPU GEMM of a few rows against the [hidden, vocab] kernel
runs far below the memory bandwidth (mid config, 8 rows: 30 ms vs 18 ms per step), while one row is fastest against
the kernel as stored. Several rows use the copy, one row the model's kernel.
"""
from __future__ import annotations

import dataclasses
import weakref
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
from flax import nnx

from llavao1_jax.model.config import MllamaConfig
from llavao1_jax.model.mllama import Mllama
from llavao1_jax.model.text import KVCache, TextDecoder

SELF_CACHE_AXES = ("batch", "length", "kv_heads", "head_dim")  # one layer's self-attention K or V
CROSS_CACHE_AXES = ("batch", "kv_heads", "head_dim", "length")  # one layer's cross-attention K or V


@dataclasses.dataclass(frozen=True)
class Graph:
    """Static structure (hashable): the config and the graph definitions of the parts."""

    config: MllamaConfig
    vision: Any
    projector: Any
    norm: Any
    lm_head: Any
    self_layer: Any
    cross_layer: Optional[Any]


class Weights(NamedTuple):
    """The parameters in decoding layout; `self_layers`/`cross_layers` hold one state per layer; `lm_head_t` is the
    LM head kernel as [vocab, hidden] (CPU only, else None)."""

    vision: Any
    projector: Any
    embed: jax.Array
    norm: Any
    lm_head: Any
    self_layers: tuple
    cross_layers: tuple
    lm_head_t: Optional[jax.Array]


@jax.jit
def _unstack(state):
    n = jax.tree.leaves(state)[0].shape[0]
    return tuple(jax.tree.map(lambda a: a[i], state) for i in range(n))


_transpose = jax.jit(lambda a: a.T)

_SPLITS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> (parameter leaves, Graph, Weights)


def split(model: Mllama) -> tuple[Graph, Weights]:
    """The model's graph and weights in decoding layout; cached per model and rebuilt when any parameter array of
    the model is replaced (e.g. after `nnx.update`)."""
    leaves = jax.tree.leaves(nnx.state(model))
    cached = _SPLITS.get(model)
    if cached is not None and len(cached[0]) == len(leaves) and all(a is b for a, b in zip(cached[0], leaves)):
        return cached[1], cached[2]
    lm = model.language_model
    vision_gd, vision = nnx.split(model.vision_model)
    projector_gd, projector = nnx.split(model.multi_modal_projector)
    norm_gd, norm = nnx.split(lm.norm)
    head_gd, head = nnx.split(lm.lm_head)
    self_gd, self_stack = nnx.split(lm.self_layers)
    cross_gd, cross_stack = nnx.split(lm.cross_layers) if lm.cross_layers is not None else (None, None)
    graph = Graph(model.config, vision_gd, projector_gd, norm_gd, head_gd, self_gd, cross_gd)
    kernel = lm.lm_head.kernel[...]
    on_cpu = all(d.platform == "cpu" for d in kernel.devices())
    weights = Weights(vision, projector, lm.embed_tokens[...], norm, head, _unstack(self_stack),
                      _unstack(cross_stack) if cross_stack is not None else (), _transpose(kernel) if on_cpu else None)
    _SPLITS[model] = (leaves, graph, weights)
    return graph, weights


class Network:
    """The merged model inside a jitted function, with `Mllama`'s decoding interface (encode_images, cross_inputs,
    language_model(...), language_model.logits) over the unrolled layout."""

    encode_images = Mllama.encode_images
    cross_inputs = Mllama.cross_inputs

    def __init__(self, graph: Graph, weights: Weights):
        self.config = graph.config
        self.vision_model = nnx.merge(graph.vision, weights.vision)
        self.multi_modal_projector = nnx.merge(graph.projector, weights.projector)
        self.language_model = _UnrolledText(graph, weights)


def init_cache(config: MllamaConfig, batch_size: int, max_length: int, num_vision_tokens: int = 0) -> KVCache:
    """An empty cache in decoding layout (zeros, one array per layer, compute dtype): self K/V [B, L, KV, hd], cross
    K/V [B, KV, hd, vision_tokens] (None for text-only prompts, num_vision_tokens = 0; filled at prefill)."""
    t = config.text
    kv, hd = t.num_key_value_heads, t.head_dim
    zeros = lambda n, shape: tuple(jnp.zeros(shape, config.dtype) for _ in range(n))
    self_kv = zeros(t.num_self_layers, (batch_size, max_length, kv, hd))
    cross_kv = zeros(t.num_cross_layers, (batch_size, kv, hd, num_vision_tokens)) if num_vision_tokens else None
    return KVCache(self_kv, self_kv, cross_kv, cross_kv)


class _UnrolledText:
    """`TextDecoder` with its layer scan replaced by an unrolled loop (embedding, RoPE, norm and head are the
    model's code, called on this object)."""

    __call__ = TextDecoder.__call__

    def __init__(self, graph: Graph, weights: Weights):
        self.cfg = graph.config.text
        self.dtype = jnp.dtype(graph.config.dtype)
        self.embed_tokens = weights.embed
        self.norm = nnx.merge(graph.norm, weights.norm)
        self.lm_head = nnx.merge(graph.lm_head, weights.lm_head)
        self.lm_head_t = weights.lm_head_t
        self.self_layers = [nnx.merge(graph.self_layer, w) for w in weights.self_layers]
        self.cross_layers = [nnx.merge(graph.cross_layer, w) for w in weights.cross_layers]

    def logits(self, hidden: jax.Array) -> jax.Array:
        """LM head logits [B, S, vocab] in the compute dtype, like `TextDecoder.logits`."""
        if self.lm_head_t is None or hidden.shape[0] == 1:
            return self.lm_head(hidden)
        return jnp.einsum("vd,bsd->bsv", self.lm_head_t.astype(self.dtype), hidden.astype(self.dtype))

    def _run_blocks(self, x, cos, sin, self_bias, cross, cache, cache_index):
        self_k, self_v = list(cache.self_k), list(cache.self_v)
        cross_k, cross_v = cache.cross_k, cache.cross_v
        computing = cross is not None and cross.states is not None  # prefill: cross K/V from the image features
        if computing:
            cross_k, cross_v = [], []
        cross_layers = set(self.cfg.cross_layer_indices)
        si = ci = 0
        for i in range(self.cfg.num_hidden_layers):
            if i not in cross_layers:
                x, (self_k[si], self_v[si]) = self.self_layers[si](x, cos, sin, self_bias, (self_k[si], self_v[si]),
                                                                  cache_index)
                si += 1
                continue
            if cross is not None:
                layer = self.cross_layers[ci]
                if computing:
                    k, v = layer.keys_values(cross.states)
                    cross_k.append(to_cache(k.astype(self.dtype)))
                    cross_v.append(to_cache(v.astype(self.dtype)))
                else:
                    k, v = to_layer(cross.k[ci]), to_layer(cross.v[ci])
                x = layer(x, k, v, cross.bias, cross.row_mask)
            ci += 1
        return x, KVCache(tuple(self_k), tuple(self_v), tuple(cross_k) if computing else cross_k,
                          tuple(cross_v) if computing else cross_v)


def to_layer(a):
    """Cross K/V from the cache layout [B, KV, hd, N] to the layers' [B, N, KV, hd] (a transpose XLA folds into the
    attention dots, which want exactly the cache layout)."""
    return a.transpose(0, 3, 1, 2)


def to_cache(a):
    """The layers' [B, N, KV, hd] to the cross cache layout [B, KV, hd, N]."""
    return a.transpose(0, 2, 3, 1)
