"""Llama-3.2-Vision ("Mllama"): vision encoder -> projector -> text decoder with gated cross-attention.

`Mllama` is an NNX module. `Mllama.forward` is the traceable computation; calling the module validates the inputs on
the host and runs `forward` as a pure function of the split state under `jax.jit` (one compilation per input shape).
`relayout` converts a model between the scanned and the per-layer text layout (`MllamaConfig.scan_layers`).
"""
from __future__ import annotations

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from llavao1_jax.model.config import MllamaConfig
from llavao1_jax.model.layers import AttentionOptions, Linear
from llavao1_jax.model.text import CrossInputs, KVCache, TextDecoder, causal_bias, cross_inputs, init_cache
from llavao1_jax.model.vision import VisionEncoder
from llavao1_jax.sharding import DEFAULT_RULES, state_shardings

INPUT_NAMES = ("input_ids", "attention_mask", "pixel_values", "aspect_ratio_ids", "aspect_ratio_mask",
               "cross_attention_mask", "position_ids")


class Mllama(nnx.Module):
    """`MllamaForConditionalGeneration` in Flax NNX, with transformers' input names, shapes and semantics."""

    def __init__(self, config: MllamaConfig, *, rngs: nnx.Rngs):
        self.config = config
        dtype, param_dtype = jnp.dtype(config.dtype), jnp.dtype(config.param_dtype)
        kw = dict(param_dtype=param_dtype, dtype=dtype, rngs=rngs)
        attention_options = AttentionOptions(config.attention_impl, config.attention_block_bytes,
                                             config.attention_split_batch)
        self.vision_model = VisionEncoder(config.vision, remat=config.remat, attention_options=attention_options, **kw)
        self.multi_modal_projector = Linear(config.vision.vision_output_dim, config.text.hidden_size,
                                            ("vision_out", "embed"), bias=True, **kw)
        self.language_model = TextDecoder(config.text, meta_row_mask=config.meta_cross_attention_row_mask,
                                          attention_options=attention_options, remat=config.remat,
                                          scan_layers=config.scan_layers,
                                          activation_rules=config.activation_rules, **kw)

    # ------------------------------------------------------------------------------------- traceable pieces
    def encode_images(self, pixel_values, aspect_ratio_ids, aspect_ratio_mask) -> jax.Array:
        """Projected image features [B, images * tiles * patches, text hidden]: what cross-attention reads."""
        feats = self.vision_model(pixel_values, aspect_ratio_ids, aspect_ratio_mask)
        b = feats.shape[0]
        return self.multi_modal_projector(feats).reshape(b, -1, self.config.text.hidden_size)

    def cross_inputs(self, cross_attention_mask, **kv) -> CrossInputs:
        """Cross-attention masks for the given `cross_attention_mask` [B, S, I, T]; `kv` adds states or cached K/V."""
        return cross_inputs(cross_attention_mask, self.config.vision.num_patches,
                            self.config.meta_cross_attention_row_mask)._replace(**kv)

    def forward(self, input_ids, attention_mask=None, pixel_values=None, aspect_ratio_ids=None,
                aspect_ratio_mask=None, cross_attention_mask=None, position_ids=None) -> jax.Array:
        """Full-sequence forward (scoring). Returns float32 logits [B, S, vocab_size]."""
        hidden = self.hidden_states(input_ids, attention_mask, pixel_values, aspect_ratio_ids, aspect_ratio_mask,
                                    cross_attention_mask, position_ids)
        return self.language_model.logits(hidden).astype(jnp.float32)

    def hidden_states(self, input_ids, attention_mask=None, pixel_values=None, aspect_ratio_ids=None,
                      aspect_ratio_mask=None, cross_attention_mask=None, position_ids=None) -> jax.Array:
        """Full-sequence forward up to the LM head: the final hidden states [B, S, hidden] (after the last norm),
        in the compute dtype. Training applies the head only at supervised positions (`llavao1_jax.train.loss`)."""
        b, s = input_ids.shape
        if position_ids is None:
            position_ids = jnp.broadcast_to(jnp.arange(s), (b, s))
        if attention_mask is None:
            attention_mask = jnp.ones((b, s), bool)
        self_bias = causal_bias(jnp.arange(s), attention_mask)
        cross = None
        if pixel_values is not None:
            states = self.encode_images(pixel_values, aspect_ratio_ids, aspect_ratio_mask)
            if cross_attention_mask is None:
                cross_attention_mask = jnp.ones((b, s, *pixel_values.shape[1:3]), jnp.int32)
            cross = self.cross_inputs(cross_attention_mask, states=states)
        hidden, _ = self.language_model(input_ids, position_ids, self_bias, cross)
        return hidden

    def init_cache(self, batch_size: int, max_length: int, num_vision_tokens: int = 0, dtype=None) -> KVCache:
        """An empty decoding cache (zeros) in the layout of the text decoder (`text.KVCache`); cross K/V are None
        for text-only prompts (num_vision_tokens = 0), else filled at prefill."""
        return init_cache(self.config.text, batch_size, max_length, num_vision_tokens,
                          dtype=dtype or self.config.dtype, scan_layers=self.config.scan_layers)

    # ---------------------------------------------------------------------------------------- host entry
    def __call__(self, input_ids, attention_mask=None, pixel_values=None, aspect_ratio_ids=None,
                 aspect_ratio_mask=None, cross_attention_mask=None, position_ids=None) -> jax.Array:
        """Validates numpy/jax inputs (transformers' names and shapes), then runs the jitted forward."""
        inputs = validate_inputs(self.config, dict(
            input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
            aspect_ratio_ids=aspect_ratio_ids, aspect_ratio_mask=aspect_ratio_mask,
            cross_attention_mask=cross_attention_mask, position_ids=position_ids))
        graphdef, state = nnx.split(self)
        return _jitted_forward(graphdef, state, inputs)


def init_model(config: MllamaConfig, seed: int = 0, *, mesh: Optional[Mesh] = None,
               rules=DEFAULT_RULES) -> Mllama:
    """A randomly initialised model, created by one jitted function straight into its shards when `mesh` is given
    (no unsharded copy anywhere)."""
    # The RBG generator compiles about twice as fast as threefry on CPU, and init quality does not depend on it.
    make = lambda: Mllama(config, rngs=nnx.Rngs(params=jax.random.key(seed, impl="rbg")))
    graphdef, abstract_state = nnx.split(nnx.eval_shape(make))
    out_shardings = state_shardings(abstract_state, mesh, rules) if mesh is not None else None
    state = jax.jit(lambda: nnx.state(make()), out_shardings=out_shardings)()
    return nnx.merge(graphdef, state)


def relayout(model: Mllama, scan_layers: bool, *, rules=DEFAULT_RULES) -> Mllama:
    """`model` with its text layers in the scanned (`scan_layers=True`) or per-layer layout (see model/text.py).

    One jitted function copies the parameters (bit-identical: stacking and slicing only), so both models exist
    side by side afterwards. When the parameters are sharded over a mesh, the new ones are placed by `rules` like
    the loaders place them. Returns `model` itself when it is already in that layout.
    """
    if model.config.scan_layers == scan_layers:
        return model
    config = model.config.replace(scan_layers=scan_layers)
    graphdef, new_state = nnx.split(nnx.eval_shape(lambda: Mllama(config, rngs=nnx.Rngs(0))))
    leaf = jax.tree.leaves(nnx.state(model))[0]
    mesh = leaf.sharding.mesh if isinstance(leaf.sharding, jax.sharding.NamedSharding) else None
    out_shardings = nnx.to_pure_dict(state_shardings(new_state, mesh, rules)) if mesh is not None else None
    convert = functools.partial(_stack_text_layers if scan_layers else _unstack_text_layers, config.text)
    params = jax.jit(convert, out_shardings=out_shardings)(nnx.to_pure_dict(nnx.state(model)))
    nnx.replace_by_pure_dict(new_state, params)
    return nnx.merge(graphdef, new_state)


def _unstack_text_layers(cfg, params: dict) -> dict:
    """Pure-dict parameters, scanned layout -> per-layer layout (`language_model.layers.{i}`)."""
    lm = dict(params["language_model"])
    layers = {}
    for name, indices in (("self_layers", cfg.self_layer_indices), ("cross_layers", cfg.cross_layer_indices)):
        stack = lm.pop(name, None)
        layers.update({i: jax.tree.map(lambda a, n=n: a[n], stack) for n, i in enumerate(indices)})
    lm["layers"] = {i: layers[i] for i in range(cfg.num_hidden_layers)}
    return dict(params, language_model=lm)


def _stack_text_layers(cfg, params: dict) -> dict:
    """Pure-dict parameters, per-layer layout -> scanned layout (`self_layers`, `cross_layers` stacks)."""
    lm = dict(params["language_model"])
    layers = lm.pop("layers")
    stack = lambda indices: jax.tree.map(lambda *a: jnp.stack(a), *(layers[i] for i in indices))
    lm["self_layers"] = stack(cfg.self_layer_indices)
    if cfg.num_cross_layers:
        lm["cross_layers"] = stack(cfg.cross_layer_indices)
    return dict(params, language_model=lm)


@functools.partial(jax.jit, static_argnums=0)
def _jitted_forward(graphdef, state, inputs):
    return nnx.merge(graphdef, state).forward(**inputs)


def _shape(x) -> tuple:
    return tuple(np.shape(x))


def validate_inputs(cfg: MllamaConfig, inputs: dict[str, Any]) -> dict[str, Any]:
    """Checks ranks, shapes, dtypes and id ranges on the host and drops absent inputs; raises ValueError naming
    the input and what is wrong (before anything compiles)."""
    out = {k: v for k, v in inputs.items() if v is not None}
    if "input_ids" not in out:
        raise ValueError("input_ids is required")
    ids = out["input_ids"]
    if len(_shape(ids)) != 2:
        raise ValueError(f"input_ids must be [batch, seq], got shape {_shape(ids)}")
    if not np.issubdtype(np.asarray(ids).dtype if not isinstance(ids, jax.Array) else ids.dtype, np.integer):
        raise ValueError(f"input_ids must be integers, got {ids.dtype}")
    b, s = _shape(ids)
    rows = cfg.text.embedding_rows
    lo, hi = int(np.min(ids)), int(np.max(ids))
    if lo < 0 or hi >= rows:
        raise ValueError(f"input_ids out of vocabulary: values must lie in [0, {rows}), got min {lo}, max {hi}")
    for name in ("attention_mask", "position_ids"):
        if name in out and _shape(out[name]) != (b, s):
            raise ValueError(f"{name} must have the shape of input_ids {(b, s)}, got {_shape(out[name])}")
    image_args = ("aspect_ratio_ids", "aspect_ratio_mask")
    if "pixel_values" in out:
        v = cfg.vision
        pv = _shape(out["pixel_values"])
        if len(pv) != 6:
            raise ValueError(f"pixel_values must be [batch, images, tiles, channels, height, width], got shape {pv}")
        want = (b, pv[1], v.max_num_tiles, v.num_channels, v.image_size, v.image_size)
        if pv != want:
            raise ValueError(f"pixel_values shape {pv} does not fit this model: expected {want} "
                             f"(batch {b} from input_ids, {v.max_num_tiles} tiles of {v.image_size} px)")
        for name in image_args:
            if name not in out:
                raise ValueError(f"{name} is required with pixel_values")
        n_img = pv[1]
        if _shape(out["aspect_ratio_ids"]) != (b, n_img):
            raise ValueError(f"aspect_ratio_ids must be [batch, images] = {(b, n_img)}, "
                             f"got {_shape(out['aspect_ratio_ids'])}")
        ar = np.asarray(out["aspect_ratio_ids"])
        if ar.min() < 0 or ar.max() > v.max_aspect_ratio_id:
            raise ValueError(f"aspect_ratio_ids must lie in [0, {v.max_aspect_ratio_id}], got {ar.min()}..{ar.max()}")
        if _shape(out["aspect_ratio_mask"]) != (b, n_img, v.max_num_tiles):
            raise ValueError(f"aspect_ratio_mask must be [batch, images, tiles] = {(b, n_img, v.max_num_tiles)}, "
                             f"got {_shape(out['aspect_ratio_mask'])}")
        if "cross_attention_mask" in out and _shape(out["cross_attention_mask"]) != (b, s, n_img, v.max_num_tiles):
            cm = _shape(out["cross_attention_mask"])
            detail = (f"it names {cm[2]} images but pixel_values holds {n_img}" if len(cm) == 4 and cm[2] != n_img
                      else f"expected {(b, s, n_img, v.max_num_tiles)}")
            raise ValueError(f"cross_attention_mask shape {cm} does not match the inputs: {detail}")
    else:
        out.pop("cross_attention_mask", None)  # text-only: cross-attention layers are skipped
        given = [n for n in image_args if n in out]
        if given:
            raise ValueError(f"{given} given without pixel_values")
    return {k: jnp.asarray(v) for k, v in out.items()}
