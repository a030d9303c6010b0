"""The tiled ViT encoder of Llama-3.2-Vision: patch embedding, gated tile/position embeddings, local layers,
gated global layers, and the concatenation of intermediate features.

Shapes for the 11B model: tiles of 560 px -> 1600 patches + class token = 1601, padded to 1608 per tile; the encoder
sees all tiles of an image as one sequence of 4 * 1608 tokens.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llavao1_jax.model.config import VisionConfig
from llavao1_jax.model.layers import (AttentionOptions, LayerNorm, Linear, activation, attention, mask_value, param,
                                      scan_layers, stack_layers)


class VisionLayer(nnx.Module):
    """Pre-norm transformer layer; `gated` layers (global encoder) scale both branches by tanh(gate)."""

    def __init__(self, cfg: VisionConfig, gated: bool, attention_options: AttentionOptions, *, param_dtype, dtype,
                 rngs: nnx.Rngs):
        d, f = cfg.hidden_size, cfg.intermediate_size
        lin = dict(param_dtype=param_dtype, dtype=dtype, rngs=rngs)
        self.input_layernorm = LayerNorm(d, cfg.norm_eps, "vision_embed", param_dtype=param_dtype, rngs=rngs)
        self.q_proj = Linear(d, d, ("vision_embed", "vision_heads"), **lin)
        self.k_proj = Linear(d, d, ("vision_embed", "vision_heads"), **lin)
        self.v_proj = Linear(d, d, ("vision_embed", "vision_heads"), **lin)
        self.o_proj = Linear(d, d, ("vision_heads", "vision_embed"), **lin)
        self.post_attention_layernorm = LayerNorm(d, cfg.norm_eps, "vision_embed", param_dtype=param_dtype, rngs=rngs)
        self.fc1 = Linear(d, f, ("vision_embed", "vision_mlp"), bias=True, **lin)
        self.fc2 = Linear(f, d, ("vision_mlp", "vision_embed"), bias=True, **lin)
        if gated:
            self.gate_attn = param(rngs, (1,), (None,), param_dtype, "zeros")
            self.gate_ffn = param(rngs, (1,), (None,), param_dtype, "zeros")
        self.gated = gated
        self.num_heads = cfg.num_attention_heads
        self.act = activation(cfg.hidden_act)
        self.attention_options = attention_options

    def __call__(self, x: jax.Array, bias: jax.Array) -> jax.Array:
        b, s, d = x.shape
        h = self.input_layernorm(x)
        split = lambda t: t.reshape(b, s, self.num_heads, d // self.num_heads)
        a = attention(split(self.q_proj(h)), split(self.k_proj(h)), split(self.v_proj(h)), bias, self.attention_options)
        a = self.o_proj(a.reshape(b, s, d))
        if self.gated:
            a = jnp.tanh(self.gate_attn[...]).astype(a.dtype) * a
        x = x + a
        m = self.fc2(self.act(self.fc1(self.post_attention_layernorm(x))))
        if self.gated:
            m = jnp.tanh(self.gate_ffn[...]).astype(m.dtype) * m
        return x + m


class TileEmbedding(nnx.Module):
    """A gated embedding per aspect-ratio id, one vector per tile, added to every patch of that tile."""

    def __init__(self, cfg: VisionConfig, *, param_dtype, rngs: nnx.Rngs):
        self.embedding = param(rngs, (cfg.max_aspect_ratio_id + 1, cfg.max_num_tiles, cfg.hidden_size),
                               (None, None, "vision_embed"), param_dtype)
        self.gate = param(rngs, (1,), (None,), param_dtype, "zeros")

    def __call__(self, x: jax.Array, aspect_ratio_ids: jax.Array) -> jax.Array:
        """x [N, T, P, D], aspect_ratio_ids [N]."""
        emb = self.embedding[...][aspect_ratio_ids][:, :, None, :].astype(x.dtype)
        return x + emb * jnp.tanh(self.gate[...]).astype(x.dtype)


class PositionEmbedding(nnx.Module):
    """Patch position embedding blended with a per-aspect-ratio tile/position embedding by one gate."""

    def __init__(self, cfg: VisionConfig, *, param_dtype, rngs: nnx.Rngs):
        self.embedding = param(rngs, (cfg.num_patches, cfg.hidden_size), (None, "vision_embed"), param_dtype)
        self.tile_embedding = param(rngs, (cfg.max_aspect_ratio_id + 1, cfg.max_num_tiles, cfg.num_patches,
                                           cfg.hidden_size), (None, None, None, "vision_embed"), param_dtype)
        self.gate = param(rngs, (1,), (None,), param_dtype, "zeros")

    def __call__(self, x: jax.Array, aspect_ratio_ids: jax.Array) -> jax.Array:
        gate = jnp.tanh(self.gate[...]).astype(x.dtype)
        x = x + (1 - gate) * self.embedding[...].astype(x.dtype)
        return x + gate * self.tile_embedding[...][aspect_ratio_ids].astype(x.dtype)


class VisionEncoder(nnx.Module):
    """pixel_values [B, I, T, C, H, W] -> features [B, I, T, num_patches, vision_output_dim]."""

    def __init__(self, cfg: VisionConfig, *, param_dtype, dtype, remat: str = "none",
                 attention_options: AttentionOptions = AttentionOptions(), rngs: nnx.Rngs):
        self.cfg = cfg
        self.dtype = dtype
        self.remat = remat
        d, p = cfg.hidden_size, cfg.patch_size
        self.patch_embedding = param(rngs, (cfg.num_channels, p, p, d), (None, None, None, "vision_embed"),
                                     param_dtype)
        self.class_embedding = param(rngs, (d,), ("vision_embed",), param_dtype)
        self.pre_tile_positional_embedding = TileEmbedding(cfg, param_dtype=param_dtype, rngs=rngs)
        self.gated_positional_embedding = PositionEmbedding(cfg, param_dtype=param_dtype, rngs=rngs)
        self.post_tile_positional_embedding = TileEmbedding(cfg, param_dtype=param_dtype, rngs=rngs)
        self.layernorm_pre = LayerNorm(d, cfg.norm_eps, "vision_embed", param_dtype=param_dtype, rngs=rngs)
        self.layernorm_post = LayerNorm(d, cfg.norm_eps, "vision_embed", param_dtype=param_dtype, rngs=rngs)
        layer = dict(param_dtype=param_dtype, dtype=dtype)
        self.transformer = stack_layers(lambda r: VisionLayer(cfg, False, attention_options, rngs=r, **layer),
                                        cfg.num_hidden_layers, rngs)
        self.global_transformer = stack_layers(lambda r: VisionLayer(cfg, True, attention_options, rngs=r, **layer),
                                               cfg.num_global_layers, rngs)

    def embed_patches(self, pixels: jax.Array) -> jax.Array:
        """[N, C, H, W] -> [N, patches, D]: the stride-p convolution as one matmul (features in (C, kh, kw) order)."""
        n, c, hgt, wid = pixels.shape
        p = self.cfg.patch_size
        x = pixels.astype(self.dtype).reshape(n, c, hgt // p, p, wid // p, p)
        x = jnp.einsum("ncipjq,cpqd->nijd", x, self.patch_embedding[...].astype(self.dtype))
        return x.reshape(n, -1, x.shape[-1])

    def __call__(self, pixel_values: jax.Array, aspect_ratio_ids: jax.Array, aspect_ratio_mask: jax.Array):
        cfg = self.cfg
        b, i, t, c, hgt, wid = pixel_values.shape
        n, d = b * i, cfg.hidden_size
        ar_ids = aspect_ratio_ids.reshape(n)
        x = self.embed_patches(pixel_values.reshape(n * t, c, hgt, wid)).reshape(n, t, -1, d)
        x = self.pre_tile_positional_embedding(x, ar_ids)
        cls = jnp.broadcast_to(self.class_embedding[...].astype(x.dtype), (n, t, 1, d))
        x = jnp.concatenate([cls, x], axis=2)
        x = self.gated_positional_embedding(x, ar_ids)
        x = self.layernorm_pre(x)

        p, pp = cfg.num_patches, cfg.padded_num_patches
        x = jnp.pad(x, ((0, 0), (0, 0), (0, pp - p), (0, 0))).reshape(n, t * pp, d)
        bias = self.attention_bias(aspect_ratio_mask.reshape(n, t))

        # Local layers, keeping the inputs of the layers named by intermediate_layers_indices.
        slots = np.full(cfg.num_hidden_layers, len(cfg.intermediate_layers_indices))
        slots[list(cfg.intermediate_layers_indices)] = np.arange(len(cfg.intermediate_layers_indices))
        saved = jnp.zeros((len(cfg.intermediate_layers_indices) + 1, n, t * pp, d), x.dtype)

        def local_step(layer, carry, slot):
            h, kept = carry
            kept = jax.lax.dynamic_update_index_in_dim(kept, h, slot, axis=0)
            return (layer(h, bias), kept), None

        (x, saved), _ = scan_layers(self.transformer, local_step, (x, saved), jnp.asarray(slots), remat=self.remat)
        x = self.layernorm_post(x)

        x = self.post_tile_positional_embedding(x.reshape(n, t, pp, d), ar_ids).reshape(n, t * pp, d)
        x, _ = scan_layers(self.global_transformer, lambda layer, h, _: (layer(h, bias), None), x, remat=self.remat)

        final = x.reshape(n, t, pp, d)[:, :, :p]
        # [K, n, t*pp, d] -> [n, t, pp, d*K] interleaved as d*K + k (transformers stacks on the last axis).
        inter = jnp.moveaxis(saved[:-1], 0, -1).reshape(n, t, pp, -1)[:, :, :p]
        return jnp.concatenate([final, inter], axis=-1).reshape(b, i, t, p, -1)

    def attention_bias(self, tile_mask: jax.Array) -> jax.Array:
        """[N, T] tile mask -> additive bias [N, 1, S, S]: blocked only where query AND key are padding."""
        cfg = self.cfg
        valid_patch = np.arange(cfg.padded_num_patches) < cfg.num_patches
        valid = (tile_mask.astype(bool)[:, :, None] & valid_patch[None, None, :]).reshape(tile_mask.shape[0], -1)
        pad = ~valid
        blocked = pad[:, :, None] & pad[:, None, :]
        return jnp.where(blocked, mask_value(), 0.0).astype(jnp.float32)[:, None]
