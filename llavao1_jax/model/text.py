"""The Llama-3 text decoder of Llama-3.2-Vision, with gated cross-attention layers among the self-attention layers.

Two layouts of the same layers (`MllamaConfig.scan_layers`; `relayout` converts a model between them):

* scanned (default, for training): layers of one kind are stacked on a leading "layers" axis. The decoder finds the
  shortest period of the self/cross pattern (5 for the 11B model: self, self, self, cross, self) and scans over
  blocks of that period; inside a block, runs of self layers are an inner scan and cross layers are applied in
  place. The 11B and 90B models therefore trace one block, whatever their depth.
* per layer (for decoding): `layers[i]` is layer i of the model, run in a Python loop. Decoding one token reads
  every weight once, and a scan over a stack makes XLA copy each layer's slice out of the stack before its matmuls,
  which makes a decode step several times slower (benchmarks/README.md).

The KV cache follows the layout (`KVCache`, `init_cache`).
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec as P

from llavao1_jax.model.config import TextConfig
from llavao1_jax.model.layers import (CACHED, PROJECTED, REMAT_POLICIES, AttentionOptions, KVLayout, Linear, RMSNorm,
                                      activation, apply_rope, attention, mask_value, param, rope_cos_sin,
                                      rope_inv_freq, stack_layers, to_layout)
from llavao1_jax.sharding import constrain


# Logical axis names of one layer's cached K and V, in the order of layers.CACHED; stacked arrays put "layers" first.
_LOGICAL_NAMES = {"b": "batch", "k": "kv_heads", "d": "head_dim", "s": "length"}
K_CACHE_AXES = tuple(_LOGICAL_NAMES[a] for a in CACHED.k)
V_CACHE_AXES = tuple(_LOGICAL_NAMES[a] for a in CACHED.v)
# Logical axis names of the hidden states between layers (maxtext's decoder-layer constraint).
HIDDEN_AXES = ("batch", "length", "embed")


class KVCache(NamedTuple):
    """Decoding cache: self-attention K/V written one chunk at a time, cross-attention K/V computed once from the
    image features (post k_norm; None for text-only prompts).

    One layer's K is [B, KV, hd, length] and its V [B, KV, length, hd] (`layers.CACHED`, the layout both attention
    matmuls read in place), where length is max_len for self-attention and the number of vision tokens for
    cross-attention. Scanned layout: arrays stacked over the layers of one kind ([n_self, ...], [n_cross, ...]).
    Per-layer layout: tuples with one array per layer of that kind, in model order.
    """

    self_k: Any
    self_v: Any
    cross_k: Any = None
    cross_v: Any = None

    @property
    def per_layer(self) -> bool:
        return isinstance(self.self_k, tuple)

    def logical_axes(self) -> "KVCache":
        """The cache with every array replaced by the PartitionSpec of its logical axis names."""
        stacked = () if self.per_layer else ("layers",)
        k_axes, v_axes = P(*stacked, *K_CACHE_AXES), P(*stacked, *V_CACHE_AXES)
        return KVCache(*(jax.tree.map(lambda _: axes, part)
                         for part, axes in zip(self, (k_axes, v_axes, k_axes, v_axes))))


def init_cache(cfg: TextConfig, batch_size: int, max_length: int, num_vision_tokens: int = 0, *, dtype,
               scan_layers: bool) -> KVCache:
    """An empty cache (zeros) in the layout of `scan_layers` (see `KVCache`); cross K/V are None for text-only
    prompts (num_vision_tokens = 0), else zeros filled at prefill."""
    sizes = dict(b=batch_size, k=cfg.num_key_value_heads, d=cfg.head_dim)

    def arrays(num_layers, length):
        k_shape, v_shape = ([{**sizes, "s": length}[a] for a in axes] for axes in CACHED)
        if scan_layers:
            return (jnp.zeros((num_layers, *k_shape), dtype), jnp.zeros((num_layers, *v_shape), dtype))
        return (tuple(jnp.zeros(k_shape, dtype) for _ in range(num_layers)),
                tuple(jnp.zeros(v_shape, dtype) for _ in range(num_layers)))

    cross_kv = arrays(cfg.num_cross_layers, num_vision_tokens) if num_vision_tokens else (None, None)
    return KVCache(*arrays(cfg.num_self_layers, max_length), *cross_kv)


def to_cache(k: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
    """K and V from the projections' layout to the cache's (`layers.CACHED`)."""
    return to_layout(k, PROJECTED.k, CACHED.k), to_layout(v, PROJECTED.v, CACHED.v)


class CrossInputs(NamedTuple):
    """What cross-attention layers see: image features (prefill/training) or cached K/V (decoding), plus masks.

    bias: additive [B, 1, S, vision_tokens]; row_mask: [B, S, 1], 0 for text rows that see no image.
    """

    bias: jax.Array
    row_mask: jax.Array
    states: Optional[jax.Array] = None
    k: Optional[jax.Array] = None
    v: Optional[jax.Array] = None


class MLP(nnx.Module):
    """Gated MLP: down(act(gate(x)) * up(x))."""

    def __init__(self, cfg: TextConfig, *, param_dtype, dtype, rngs: nnx.Rngs):
        lin = dict(param_dtype=param_dtype, dtype=dtype, rngs=rngs)
        self.gate_proj = Linear(cfg.hidden_size, cfg.intermediate_size, ("embed", "mlp"), **lin)
        self.up_proj = Linear(cfg.hidden_size, cfg.intermediate_size, ("embed", "mlp"), **lin)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, ("mlp", "embed"), **lin)
        self.act = activation(cfg.hidden_act)

    def __call__(self, x):
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class AttentionProjections(nnx.Module):
    """q/k/v/o projections with grouped K/V heads."""

    def __init__(self, cfg: TextConfig, attention_options: AttentionOptions, *, param_dtype, dtype, rngs: nnx.Rngs):
        d, kvd = cfg.hidden_size, cfg.num_key_value_heads * cfg.head_dim
        lin = dict(param_dtype=param_dtype, dtype=dtype, rngs=rngs)
        self.q_proj = Linear(d, d, ("embed", "heads"), **lin)
        self.k_proj = Linear(d, kvd, ("embed", "kv_heads"), **lin)
        self.v_proj = Linear(d, kvd, ("embed", "kv_heads"), **lin)
        self.o_proj = Linear(d, d, ("heads", "embed"), **lin)
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.attention_options = attention_options

    def query(self, x):
        return self.q_proj(x).reshape(*x.shape[:2], self.num_heads, self.head_dim)

    def keys_values(self, x):
        shape = (*x.shape[:2], self.num_kv_heads, self.head_dim)
        return self.k_proj(x).reshape(shape), self.v_proj(x).reshape(shape)

    def attend(self, q, k, v, bias, layout: KVLayout = PROJECTED):
        return attention(q, k.astype(q.dtype), v.astype(q.dtype), bias, self.attention_options, layout)

    def output(self, a):
        return self.o_proj(a.reshape(*a.shape[:2], -1))


class SelfAttentionLayer(nnx.Module):
    """Llama block: RMSNorm -> GQA attention with RoPE -> residual -> RMSNorm -> gated MLP -> residual."""

    def __init__(self, cfg: TextConfig, attention_options: AttentionOptions, *, param_dtype, dtype, rngs: nnx.Rngs):
        kw = dict(param_dtype=param_dtype, rngs=rngs)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, "embed", **kw)
        self.self_attn = AttentionProjections(cfg, attention_options, dtype=dtype, **kw)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, "embed", **kw)
        self.mlp = MLP(cfg, dtype=dtype, **kw)

    def __call__(self, x, cos, sin, bias, cache_kv=None, cache_index=None):
        """x [B, S, D]; bias additive [B, 1, S, keys]. With `cache_kv` (one layer's K and V in `layers.CACHED`
        layout) the new K/V are written at `cache_index` and attention runs over the whole cache. Returns (x, (k, v)),
        K/V in the cache layout with a cache, else as projected."""
        h = self.input_layernorm(x)
        q = apply_rope(self.self_attn.query(h), cos, sin)
        k, v = self.self_attn.keys_values(h)
        k = apply_rope(k, cos, sin)
        layout = PROJECTED
        if cache_kv is not None:
            layout = CACHED
            k_axis, v_axis = CACHED.position_axis()
            k, v = to_cache(k.astype(cache_kv[0].dtype), v.astype(cache_kv[1].dtype))
            k = jax.lax.dynamic_update_slice_in_dim(cache_kv[0], k, cache_index, axis=k_axis)
            v = jax.lax.dynamic_update_slice_in_dim(cache_kv[1], v, cache_index, axis=v_axis)
        x = x + self.self_attn.output(self.self_attn.attend(q, k, v, bias, layout))
        return x + self.mlp(self.post_attention_layernorm(x)), (k, v)


class CrossAttentionLayer(nnx.Module):
    """Gated cross-attention block over image features (no RoPE, RMSNorm on q and k heads)."""

    def __init__(self, cfg: TextConfig, meta_row_mask: bool, attention_options: AttentionOptions, *, param_dtype, dtype,
                 rngs: nnx.Rngs):
        kw = dict(param_dtype=param_dtype, rngs=rngs)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, "embed", **kw)
        self.cross_attn = AttentionProjections(cfg, attention_options, dtype=dtype, **kw)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, "head_dim", **kw)
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, "head_dim", **kw)
        self.cross_attn_attn_gate = param(rngs, (1,), (None,), param_dtype, "zeros")
        self.cross_attn_mlp_gate = param(rngs, (1,), (None,), param_dtype, "zeros")
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, "embed", **kw)
        self.mlp = MLP(cfg, dtype=dtype, **kw)
        self.meta_row_mask = meta_row_mask

    def keys_values(self, states):
        """Image features [B, N, D] -> K, V [B, N, KV, hd] (K after k_norm); computed once per image."""
        k, v = self.cross_attn.keys_values(states)
        return self.k_norm(k), v

    def __call__(self, x, k, v, bias, row_mask, layout: KVLayout = PROJECTED):
        """x [B, S, D]; k, v from `keys_values` (PROJECTED) or a cache (CACHED); bias [B, 1, S, N].

        K/V may have fewer rows than x, B / c: each then serves c consecutive rows of x (the copies of a forked
        prefix), which attend as c * S queries of that row."""
        h = self.input_layernorm(x)
        q = self.q_norm(self.cross_attn.query(h))
        b, s = q.shape[:2]
        rows = k.shape[0]
        if b % rows:
            raise ValueError(f"cross-attention K/V rows ({rows}) must divide the batch ({b})")
        bias = jnp.broadcast_to(bias, (b, 1, s, bias.shape[-1])).reshape(rows, 1, b // rows * s, -1)
        a = self.cross_attn.attend(q.reshape(rows, b // rows * s, *q.shape[2:]), k, v, bias, layout)
        a = a.reshape(b, s, *a.shape[2:])
        if self.meta_row_mask:
            a = a * row_mask[..., None].astype(a.dtype)
        x = x + jnp.tanh(self.cross_attn_attn_gate[...]).astype(x.dtype) * self.cross_attn.output(a)
        m = self.mlp(self.post_attention_layernorm(x)) * row_mask.astype(x.dtype)
        return x + jnp.tanh(self.cross_attn_mlp_gate[...]).astype(x.dtype) * m


def layer_period(cfg: TextConfig) -> int:
    """Shortest period p (dividing the depth) of the self/cross layer pattern."""
    kinds = np.zeros(cfg.num_hidden_layers, bool)
    kinds[list(cfg.cross_layer_indices)] = True
    for p in range(1, cfg.num_hidden_layers + 1):
        if cfg.num_hidden_layers % p == 0 and (kinds.reshape(-1, p) == kinds[:p]).all():
            return p
    raise AssertionError("unreachable: the full depth is always a period")


def block_runs(cfg: TextConfig) -> list[tuple[str, int]]:
    """The layers of one block as runs, e.g. [('self', 3), ('cross', 1), ('self', 1)] for the 11B model."""
    runs: list[tuple[str, int]] = []
    cross = set(cfg.cross_layer_indices)
    for i in range(layer_period(cfg)):
        kind = "cross" if i in cross else "self"
        if runs and runs[-1][0] == kind:
            runs[-1] = (kind, runs[-1][1] + 1)
        else:
            runs.append((kind, 1))
    return runs


def causal_bias(query_slots: jax.Array, key_valid: jax.Array) -> jax.Array:
    """Additive self-attention bias [B, 1, Sq, Sk]: key slot t is visible from query slot s iff t <= s and the key
    is valid (not padding, already written). query_slots [Sq], key_valid [B, Sk] bool."""
    causal = jnp.arange(key_valid.shape[1])[None, :] <= query_slots[:, None]
    allowed = causal[None] & key_valid.astype(bool)[:, None, :]
    return jnp.where(allowed, 0.0, mask_value()).astype(jnp.float32)[:, None]


def cross_inputs(cross_attention_mask: jax.Array, num_patches: int, meta_row_mask: bool = False) -> CrossInputs:
    """Masks for cross-attention from the processor's `cross_attention_mask` [B, S, I, T] (1 = may attend).

    A text row that may attend to no tile attends to all vision tokens with weight from the scores (transformers'
    behaviour) and its MLP branch is zeroed by `row_mask`.
    """
    m = cross_attention_mask.astype(bool)
    b, s, i, t = m.shape
    row_any = m.any(axis=(2, 3))
    allowed = m | ~row_any[:, :, None, None]
    bias = jnp.where(allowed, 0.0, mask_value()).astype(jnp.float32)
    bias = jnp.broadcast_to(bias[..., None], (b, s, i, t, num_patches)).reshape(b, 1, s, i * t * num_patches)
    return CrossInputs(bias=bias, row_mask=row_any[..., None].astype(jnp.float32))


class TextDecoder(nnx.Module):
    """Token embeddings, the self/cross layers (scanned blocks or a per-layer loop, see the module docstring), final
    RMSNorm and the LM head. With `activation_rules`, the hidden states after the embedding and after every layer
    are constrained to the sharding of HIDDEN_AXES under those rules (`sharding.constrain`)."""

    def __init__(self, cfg: TextConfig, *, meta_row_mask: bool = False,
                 attention_options: AttentionOptions = AttentionOptions(), param_dtype,
                 dtype, remat: str = "none", scan_layers: bool = True, activation_rules=None, rngs: nnx.Rngs):
        self.cfg = cfg
        self.activation_rules = activation_rules
        self.dtype = dtype
        self.remat = remat
        self.scan_layers = scan_layers
        kw = dict(param_dtype=param_dtype, dtype=dtype)
        self.embed_tokens = param(rngs, (cfg.embedding_rows, cfg.hidden_size), ("vocab", "embed"), param_dtype)
        make_self = lambda r: SelfAttentionLayer(cfg, attention_options, rngs=r, **kw)
        make_cross = lambda r: CrossAttentionLayer(cfg, meta_row_mask, attention_options, rngs=r, **kw)
        if scan_layers:
            self.self_layers = stack_layers(make_self, cfg.num_self_layers, rngs)
            self.cross_layers = stack_layers(make_cross, cfg.num_cross_layers, rngs) if cfg.num_cross_layers else None
            self.runs = tuple(block_runs(cfg))
            self.num_blocks = cfg.num_hidden_layers // layer_period(cfg)
        else:
            cross = set(cfg.cross_layer_indices)
            self.layers = nnx.List([(make_cross if i in cross else make_self)(rngs)
                                    for i in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, "embed", param_dtype=param_dtype, rngs=rngs)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, ("embed", "vocab"), param_dtype=param_dtype,
                              dtype=dtype, rngs=rngs)

    def __call__(self, input_ids: jax.Array, positions: jax.Array, self_bias: jax.Array,
                 cross: Optional[CrossInputs] = None, cache: Optional[KVCache] = None, cache_index=None):
        """Final hidden states [B, S, D] (after the last norm) and the updated cache (None without one).

        positions [B, S] are RoPE positions; `self_bias` comes from `causal_bias`. Without `cross` (text only)
        every cross-attention layer is skipped, as in transformers. With `cache` (in this decoder's layout, see
        `init_cache`), K/V of this chunk are written at `cache_index`; cross K/V are computed from `cross.states`
        when given (and stored in the cache), else read from `cross.k/v` (the cache's cross arrays).
        """
        x = self._constrain(self.embed_tokens[...][input_ids].astype(self.dtype))
        cfg = self.cfg
        inv_freq = rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_type, cfg.rope_factor, cfg.rope_low_freq_factor,
                                 cfg.rope_high_freq_factor, cfg.rope_original_max_position_embeddings)
        cos, sin = rope_cos_sin(positions, inv_freq, self.dtype)
        steps = self._layer_steps(cos, sin, self_bias, cross, cache_index)
        run = self._run_blocks if self.scan_layers else self._run_layers
        x, new_cache = run(x, steps, cross, cache)
        return self.norm(x), new_cache

    def logits(self, hidden: jax.Array) -> jax.Array:
        return self.lm_head(hidden)

    def _constrain(self, h: jax.Array) -> jax.Array:
        return constrain(h, HIDDEN_AXES, self.activation_rules)

    # ------------------------------------------------------------------------------------------------ layer loops
    def _layer_steps(self, cos, sin, self_bias, cross, cache_index):
        """The per-layer bodies both layouts run, `step(graphdef, h, layer_state, kv) -> (h, (k, v))` (remat-wrapped
        by the config's policy): self layers write `kv` (their cache or None) at `cache_index`; cross layers use the
        given cached K/V or, with kv None, compute them from `cross.states`, and return them in the cache layout."""
        remat = (lambda f: f) if self.remat == "none" else (
            lambda f: jax.checkpoint(f, policy=REMAT_POLICIES[self.remat], prevent_cse=False, static_argnums=0))

        @remat
        def self_step(graphdef, h, layer_state, kv):
            h, kv = nnx.merge(graphdef, layer_state)(h, cos, sin, self_bias, kv, cache_index)
            return self._constrain(h), kv

        @remat
        def cross_step(graphdef, h, layer_state, kv):
            layer = nnx.merge(graphdef, layer_state)
            if kv is not None:
                return self._constrain(layer(h, *kv, cross.bias, cross.row_mask, CACHED)), kv
            k, v = layer.keys_values(cross.states)
            return self._constrain(layer(h, k, v, cross.bias, cross.row_mask)), to_cache(k, v)

        return self_step, cross_step

    def _run_layers(self, x, steps, cross, cache):
        """The per-layer layout: one layer after another; the cache holds one array per layer."""
        self_step, cross_step = steps
        self_kv, cross_kv = [], []
        computing = cross is not None and cross.states is not None  # prefill: cross K/V from the image features
        si = ci = 0
        for layer in self.layers:
            graphdef, state = nnx.split(layer)
            if isinstance(layer, SelfAttentionLayer):
                kv = (cache.self_k[si], cache.self_v[si]) if cache is not None else None
                x, kv = self_step(graphdef, x, state, kv)
                self_kv.append(kv)
                si += 1
                continue
            if cross is not None:
                kv = None if computing else (cross.k[ci], cross.v[ci])
                x, kv = cross_step(graphdef, x, state, kv)
                if computing:
                    cross_kv.append(kv)
            ci += 1
        if cache is None:
            return x, None
        self_k, self_v = tuple(zip(*self_kv)) if self_kv else ((), ())
        cross_k, cross_v = tuple(zip(*cross_kv)) if cross_kv else (cache.cross_k, cache.cross_v)
        return x, KVCache(self_k, self_v, cross_k, cross_v)

    def _run_blocks(self, x, steps, cross, cache):
        """The scanned layout: a scan over blocks of the layer period, inner scans over runs of self layers."""
        self_step, cross_step = steps
        nb = self.num_blocks
        per_block = lambda tree: jax.tree.map(lambda a: a.reshape(nb, a.shape[0] // nb, *a.shape[1:]), tree)
        self_gd, self_state = nnx.split(self.self_layers)
        use_cross = cross is not None and self.cross_layers is not None
        xs = {"self": per_block(self_state)}
        if cache is not None:
            xs["self_kv"] = per_block((cache.self_k, cache.self_v))
        if use_cross:
            cross_gd, cross_state = nnx.split(self.cross_layers)
            xs["cross"] = per_block(cross_state)
            if cross.states is None:
                xs["cross_kv"] = per_block((cross.k, cross.v))

        def self_scan_step(h, inputs):
            h, new_kv = self_step(self_gd, h, *inputs)
            return h, (new_kv if cache is not None else None)

        def block(h, blk):
            si = ci = 0
            self_out, cross_out = [], []
            for kind, count in self.runs:
                take = lambda tree, start: jax.tree.map(lambda a: a[start:start + count], tree)
                if kind == "self":
                    kv = take(blk["self_kv"], si) if cache is not None else None
                    h, new_kv = jax.lax.scan(self_scan_step, h, (take(blk["self"], si), kv))
                    self_out.append(new_kv)
                    si += count
                elif use_cross:
                    for c in range(ci, ci + count):
                        pick = lambda tree: jax.tree.map(lambda a: a[c], tree)
                        kv = pick(blk["cross_kv"]) if "cross_kv" in blk else None
                        h, new_kv = cross_step(cross_gd, h, pick(blk["cross"]), kv)
                        cross_out.append(jax.tree.map(lambda a: a[None], new_kv))
                    ci += count
            cat = lambda parts: jax.tree.map(lambda *a: jnp.concatenate(a), *parts) if parts else None
            ys = {}
            if cache is not None:
                ys["self_kv"] = cat(self_out)
                if use_cross:
                    ys["cross_kv"] = cat(cross_out)
            return h, ys

        x, ys = jax.lax.scan(block, x, xs)
        if cache is None:
            return x, None
        flat = lambda tree: jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:]), tree)
        self_k, self_v = flat(ys["self_kv"])
        cross_k, cross_v = flat(ys["cross_kv"]) if use_cross else (cache.cross_k, cache.cross_v)
        return x, KVCache(self_k, self_v, cross_k, cross_v)
