"""The Llama-3 text decoder of Llama-3.2-Vision, with gated cross-attention layers among the self-attention layers.

Layers of one kind are stacked. The decoder finds the shortest period of the self/cross pattern (5 for the 11B model:
self, self, self, cross, self) and scans over blocks of that period; inside a block, runs of self layers are an inner
scan and cross layers are applied in place. The 11B and 90B models therefore trace one block, whatever their depth.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llavao1_jax.model.config import TextConfig
from llavao1_jax.model.layers import (REMAT_POLICIES, Linear, RMSNorm, activation, apply_rope, attention, mask_value,
                                      param, rope_cos_sin, rope_inv_freq, stack_layers)


class KVCache(NamedTuple):
    """Decoding cache. Self-attention K/V [n_self, B, max_len, KV, head_dim] (sequence-major, so a step writes one
    contiguous slice per row and attention reads it without a transpose); cross-attention K/V
    [n_cross, B, vision_tokens, KV, head_dim] computed once from the image features (post k_norm)."""

    self_k: jax.Array
    self_v: jax.Array
    cross_k: Optional[jax.Array] = None
    cross_v: Optional[jax.Array] = None

    LOGICAL_AXES = ("layers", "batch", "length", "kv_heads", "head_dim")


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

    def __init__(self, cfg: TextConfig, attention_impl: str, *, param_dtype, dtype, rngs: nnx.Rngs):
        d, kvd = cfg.hidden_size, cfg.num_key_value_heads * cfg.head_dim
        lin = dict(param_dtype=param_dtype, dtype=dtype, rngs=rngs)
        self.q_proj = Linear(d, d, ("embed", "heads"), **lin)
        self.k_proj = Linear(d, kvd, ("embed", "kv_heads"), **lin)
        self.v_proj = Linear(d, kvd, ("embed", "kv_heads"), **lin)
        self.o_proj = Linear(d, d, ("heads", "embed"), **lin)
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.attention_impl = attention_impl

    def query(self, x):
        return self.q_proj(x).reshape(*x.shape[:2], self.num_heads, self.head_dim)

    def keys_values(self, x):
        shape = (*x.shape[:2], self.num_kv_heads, self.head_dim)
        return self.k_proj(x).reshape(shape), self.v_proj(x).reshape(shape)

    def attend(self, q, k, v, bias):
        return attention(q, k.astype(q.dtype), v.astype(q.dtype), bias, self.attention_impl)

    def output(self, a):
        return self.o_proj(a.reshape(*a.shape[:2], -1))


class SelfAttentionLayer(nnx.Module):
    """Llama block: RMSNorm -> GQA attention with RoPE -> residual -> RMSNorm -> gated MLP -> residual."""

    def __init__(self, cfg: TextConfig, attention_impl: str, *, param_dtype, dtype, rngs: nnx.Rngs):
        kw = dict(param_dtype=param_dtype, rngs=rngs)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, "embed", **kw)
        self.self_attn = AttentionProjections(cfg, attention_impl, dtype=dtype, **kw)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, "embed", **kw)
        self.mlp = MLP(cfg, dtype=dtype, **kw)

    def __call__(self, x, cos, sin, bias, cache_kv=None, cache_index=None):
        """x [B, S, D]; bias additive [B, 1, S, keys]. With `cache_kv` ([B, L, KV, hd] each) the new K/V are
        written at `cache_index` and attention runs over the whole cache. Returns (x, (k, v))."""
        h = self.input_layernorm(x)
        q = apply_rope(self.self_attn.query(h), cos, sin)
        k, v = self.self_attn.keys_values(h)
        k = apply_rope(k, cos, sin)
        if cache_kv is not None:
            k = jax.lax.dynamic_update_slice_in_dim(cache_kv[0], k.astype(cache_kv[0].dtype), cache_index, axis=1)
            v = jax.lax.dynamic_update_slice_in_dim(cache_kv[1], v.astype(cache_kv[1].dtype), cache_index, axis=1)
        x = x + self.self_attn.output(self.self_attn.attend(q, k, v, bias))
        return x + self.mlp(self.post_attention_layernorm(x)), (k, v)


class CrossAttentionLayer(nnx.Module):
    """Gated cross-attention block over image features (no RoPE, RMSNorm on q and k heads)."""

    def __init__(self, cfg: TextConfig, meta_row_mask: bool, attention_impl: str, *, param_dtype, dtype,
                 rngs: nnx.Rngs):
        kw = dict(param_dtype=param_dtype, rngs=rngs)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, "embed", **kw)
        self.cross_attn = AttentionProjections(cfg, attention_impl, dtype=dtype, **kw)
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

    def __call__(self, x, k, v, bias, row_mask):
        h = self.input_layernorm(x)
        q = self.q_norm(self.cross_attn.query(h))
        a = self.cross_attn.attend(q, k, v, bias)
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
    """Token embeddings, the scanned self/cross layer blocks, final RMSNorm and the LM head."""

    def __init__(self, cfg: TextConfig, *, meta_row_mask: bool = False, attention_impl: str = "xla", param_dtype,
                 dtype, remat: str = "none", rngs: nnx.Rngs):
        self.cfg = cfg
        self.dtype = dtype
        self.remat = remat
        kw = dict(param_dtype=param_dtype, dtype=dtype)
        # 8 extra rows: <|image|> (= vocab_size) and 7 more learnable embeddings from Meta's checkpoint.
        self.embed_tokens = param(rngs, (cfg.vocab_size + 8, cfg.hidden_size), ("vocab", "embed"), param_dtype)
        self.self_layers = stack_layers(lambda r: SelfAttentionLayer(cfg, attention_impl, rngs=r, **kw),
                                        cfg.num_self_layers, rngs)
        self.cross_layers = (stack_layers(lambda r: CrossAttentionLayer(cfg, meta_row_mask, attention_impl, rngs=r, **kw),
                                          cfg.num_cross_layers, rngs) if cfg.num_cross_layers else None)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, "embed", param_dtype=param_dtype, rngs=rngs)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, ("embed", "vocab"), param_dtype=param_dtype,
                              dtype=dtype, rngs=rngs)
        self.runs = tuple(block_runs(cfg))
        self.num_blocks = cfg.num_hidden_layers // layer_period(cfg)

    def __call__(self, input_ids: jax.Array, positions: jax.Array, self_bias: jax.Array,
                 cross: Optional[CrossInputs] = None, cache: Optional[KVCache] = None, cache_index=None):
        """Final hidden states [B, S, D] (after the last norm) and the updated cache (None without one).

        positions [B, S] are RoPE positions; `self_bias` comes from `causal_bias`. Without `cross` (text only)
        every cross-attention layer is skipped, as in transformers. With `cache`, K/V of this chunk are written at
        `cache_index`; cross K/V are computed from `cross.states` when given, else read from `cross.k/v`.
        """
        x = self.embed_tokens[...][input_ids].astype(self.dtype)
        cfg = self.cfg
        inv_freq = rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_type, cfg.rope_factor, cfg.rope_low_freq_factor,
                                 cfg.rope_high_freq_factor, cfg.rope_original_max_position_embeddings)
        cos, sin = rope_cos_sin(positions, inv_freq, self.dtype)
        x, new_cache = self._run_blocks(x, cos, sin, self_bias, cross, cache, cache_index)
        return self.norm(x), new_cache

    def logits(self, hidden: jax.Array) -> jax.Array:
        return self.lm_head(hidden)

    # ------------------------------------------------------------------------------------------------ layer scan
    def _run_blocks(self, x, cos, sin, self_bias, cross, cache, cache_index):
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
        policy = REMAT_POLICIES[self.remat]
        maybe_remat = (lambda f: jax.checkpoint(f, policy=policy, prevent_cse=False)) if self.remat != "none" else (
            lambda f: f)

        @maybe_remat
        def self_step(h, inputs):
            layer_state, kv = inputs
            h, new_kv = nnx.merge(self_gd, layer_state)(h, cos, sin, self_bias, kv, cache_index)
            return h, (new_kv if cache is not None else None)

        @maybe_remat
        def cross_step(h, layer_state, kv):
            layer = nnx.merge(cross_gd, layer_state)
            k, v = layer.keys_values(cross.states) if kv is None else kv
            return layer(h, k, v, cross.bias, cross.row_mask), (k, v)

        def block(h, blk):
            si = ci = 0
            self_out, cross_out = [], []
            for kind, count in self.runs:
                take = lambda tree, start: jax.tree.map(lambda a: a[start:start + count], tree)
                if kind == "self":
                    kv = take(blk["self_kv"], si) if cache is not None else None
                    h, new_kv = jax.lax.scan(self_step, h, (take(blk["self"], si), kv))
                    self_out.append(new_kv)
                    si += count
                elif use_cross:
                    for c in range(ci, ci + count):
                        pick = lambda tree: jax.tree.map(lambda a: a[c], tree)
                        kv = pick(blk["cross_kv"]) if "cross_kv" in blk else None
                        h, new_kv = cross_step(h, pick(blk["cross"]), kv)
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
