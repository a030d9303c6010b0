"""Configuration of Llama-3.2-Vision ("Mllama"): frozen dataclasses, Hugging Face config.json I/O and presets.

The field names follow transformers' `MllamaVisionConfig` / `MllamaTextConfig`, so a `config.json` maps onto them
one to one. Both layouts are read: transformers 4.x (`rope_scaling` + `rope_theta`, vision `attention_heads`) and
5.x (`rope_parameters`, `num_attention_heads`). Execution knobs (dtypes, remat, layer layout) live on `MllamaConfig`
itself and are not written to config.json.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

from llavao1_jax.util import round_up

DEFAULT_ASPECT_RATIOS = ((1, 1), (1, 2), (1, 3), (1, 4), (2, 1), (2, 2), (3, 1), (4, 1))


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """The tiled ViT encoder (local layers, then gated global layers)."""

    hidden_size: int = 1280
    intermediate_size: int = 5120
    num_hidden_layers: int = 32
    num_global_layers: int = 8
    num_attention_heads: int = 16
    num_channels: int = 3
    image_size: int = 560
    patch_size: int = 14
    norm_eps: float = 1e-5
    max_num_tiles: int = 4
    hidden_act: str = "gelu"
    # Index i means the INPUT of local layer i (Meta's reference and transformers <= 4.54).
    intermediate_layers_indices: tuple[int, ...] = (3, 7, 15, 23, 30)
    vision_output_dim: int = 7680
    supported_aspect_ratios: tuple[tuple[int, int], ...] = DEFAULT_ASPECT_RATIOS

    def __post_init__(self):
        expected = self.hidden_size * (1 + len(self.intermediate_layers_indices))
        if self.vision_output_dim != expected:
            raise ValueError(f"vision_output_dim={self.vision_output_dim} must equal hidden_size*(1+len("
                             f"intermediate_layers_indices))={expected}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}")
        bad = [i for i in self.intermediate_layers_indices if not 0 <= i < self.num_hidden_layers]
        if bad:
            raise ValueError(f"intermediate_layers_indices {bad} outside [0, {self.num_hidden_layers})")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_patches(self) -> int:
        """Patches per tile plus the class token (1601 for 560-px tiles of 14 px)."""
        return (self.image_size // self.patch_size) ** 2 + 1

    @property
    def padded_num_patches(self) -> int:
        """Patches per tile after padding to a multiple of 8 (1608 for the 11B model)."""
        return round_up(self.num_patches, 8)

    @property
    def max_aspect_ratio_id(self) -> int:
        return len(self.supported_aspect_ratios)


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """The Llama-3 decoder with gated cross-attention layers at `cross_attention_layers`."""

    vocab_size: int = 128256
    hidden_size: int = 4096
    intermediate_size: int = 14336
    num_hidden_layers: int = 40
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    # llama3 RoPE scaling; rope_type "default" ignores the other four.
    rope_type: str = "llama3"
    rope_factor: float = 8.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_position_embeddings: int = 8192
    max_position_embeddings: int = 131072
    cross_attention_layers: tuple[int, ...] = (3, 8, 13, 18, 23, 28, 33, 38)
    bos_token_id: int = 128000
    eos_token_id: tuple[int, ...] = (128001, 128008, 128009)
    pad_token_id: int = 128004
    tie_word_embeddings: bool = False

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size={self.hidden_size} not divisible by num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        if self.rope_type not in ("default", "llama3"):
            raise ValueError(f"unsupported rope_type {self.rope_type!r} (supported: 'default', 'llama3')")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def embedding_rows(self) -> int:
        """Rows of the input embedding: the vocabulary, then `<|image|>` (id vocab_size) and 7 more rows from Meta's
        checkpoint. The LM head has vocab_size rows, so those ids are never predicted."""
        return self.vocab_size + 8

    @property
    def cross_layer_indices(self) -> tuple[int, ...]:
        """Cross-attention layers that exist (transformers ignores indices past the last layer)."""
        return tuple(sorted(i for i in self.cross_attention_layers if i < self.num_hidden_layers))

    @property
    def num_cross_layers(self) -> int:
        return len(self.cross_layer_indices)

    @property
    def self_layer_indices(self) -> tuple[int, ...]:
        """The self-attention layers, in model order."""
        return tuple(i for i in range(self.num_hidden_layers) if i not in self.cross_layer_indices)

    @property
    def num_self_layers(self) -> int:
        return self.num_hidden_layers - self.num_cross_layers


@dataclasses.dataclass(frozen=True)
class MllamaConfig:
    """The whole model plus how to run it.

    dtype: activation/compute dtype; param_dtype: storage dtype of the parameters;
    remat: activation checkpointing policy for the text and vision layers ("none", "full" = save nothing,
    "dots" = save matmul outputs without batch dims); scan_layers: layout of the text decoder's layers, stacked and
    scanned (True: one trace whatever the depth, for training) or one module per layer run in a Python loop (False:
    what decoding wants, see model/text.py; the vision encoder is scanned either way, it runs once per prefill);
    attention_impl: "xla" (exact, any device) or "cudnn" (fused flash attention on NVIDIA GPUs, bf16/fp16);
    attention_block_bytes: the most bytes of float32 attention scores the "xla" path holds in one block (None: the
    backend's default, 8 MiB of a few batch rows on CPU, 1 GiB spanning the batch elsewhere; see
    `layers.AttentionOptions`); attention_split_batch: whether such a block may take a subset of the batch rows (None:
    the backend's default, yes on CPU only); meta_cross_attention_row_mask: also zero the cross-attention
    output of text rows that see no image (Meta's reference) instead of only the MLP branch (transformers);
    activation_rules: a logical-axis rules table (`llavao1_jax.sharding`) that places the text decoder's hidden
    states at every layer boundary, ("batch", "length", "embed"), on the mesh set by `jax.set_mesh` (None: no
    constraints; the trainer passes its config's rules).
    """

    vision: VisionConfig = VisionConfig()
    text: TextConfig = TextConfig()
    image_token_index: int = 128256
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: str = "none"
    scan_layers: bool = True
    attention_impl: str = "xla"
    attention_block_bytes: Optional[int] = None
    attention_split_batch: Optional[bool] = None
    meta_cross_attention_row_mask: bool = False
    activation_rules: Optional[tuple] = None

    def __post_init__(self):
        if self.attention_impl not in ("xla", "cudnn"):
            raise ValueError(f"attention_impl must be 'xla' or 'cudnn', got {self.attention_impl!r}")
        if self.attention_block_bytes is not None and not self.attention_block_bytes > 0:
            raise ValueError(f"attention_block_bytes must be > 0 or None, got {self.attention_block_bytes!r}")
        if self.remat not in ("none", "full", "dots"):
            raise ValueError(f"remat must be 'none', 'full' or 'dots', got {self.remat!r}")

    def replace(self, **changes) -> "MllamaConfig":
        return dataclasses.replace(self, **changes)

    # ----------------------------------------------------------------------------------- Hugging Face I/O
    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], **overrides) -> "MllamaConfig":
        """Builds a config from a transformers `MllamaConfig` dict (4.x or 5.x layout)."""
        if "vision_config" not in d or "text_config" not in d:
            raise ValueError("not an Mllama config: expected 'vision_config' and 'text_config' keys")
        return cls(vision=_vision_from_hf(d["vision_config"]), text=_text_from_hf(d["text_config"]),
                   image_token_index=d.get("image_token_index", d.get("image_token_id", 128256)), **overrides)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike, **overrides) -> "MllamaConfig":
        try:
            with open(path) as f:
                d = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"no config.json at {path}") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
        try:
            return cls.from_hf_dict(d, **overrides)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from None

    def to_hf_dict(self) -> dict[str, Any]:
        """A transformers 4.x-layout `config.json` dict (transformers 5.x reads it too)."""
        v, t = self.vision, self.text
        vision = dict(model_type="mllama_vision_model", hidden_size=v.hidden_size,
                      intermediate_size=v.intermediate_size, num_hidden_layers=v.num_hidden_layers,
                      num_global_layers=v.num_global_layers, attention_heads=v.num_attention_heads,
                      num_channels=v.num_channels, image_size=v.image_size, patch_size=v.patch_size,
                      norm_eps=v.norm_eps, max_num_tiles=v.max_num_tiles, hidden_act=v.hidden_act,
                      intermediate_layers_indices=list(v.intermediate_layers_indices),
                      vision_output_dim=v.vision_output_dim,
                      supported_aspect_ratios=[list(a) for a in v.supported_aspect_ratios])
        rope_scaling = None
        if t.rope_type == "llama3":
            rope_scaling = dict(rope_type="llama3", factor=t.rope_factor, low_freq_factor=t.rope_low_freq_factor,
                                high_freq_factor=t.rope_high_freq_factor,
                                original_max_position_embeddings=t.rope_original_max_position_embeddings)
        eos = list(t.eos_token_id)
        text = dict(model_type="mllama_text_model", vocab_size=t.vocab_size, hidden_size=t.hidden_size,
                    intermediate_size=t.intermediate_size, num_hidden_layers=t.num_hidden_layers,
                    num_attention_heads=t.num_attention_heads, num_key_value_heads=t.num_key_value_heads,
                    hidden_act=t.hidden_act, rms_norm_eps=t.rms_norm_eps, rope_theta=t.rope_theta,
                    rope_scaling=rope_scaling, max_position_embeddings=t.max_position_embeddings,
                    cross_attention_layers=list(t.cross_attention_layers), bos_token_id=t.bos_token_id,
                    eos_token_id=eos[0] if len(eos) == 1 else eos, pad_token_id=t.pad_token_id,
                    tie_word_embeddings=t.tie_word_embeddings)
        return dict(model_type="mllama", architectures=["MllamaForConditionalGeneration"],
                    image_token_index=self.image_token_index, vision_config=vision, text_config=text,
                    torch_dtype=self.param_dtype)


def _pick(d: dict, *names, default=None):
    for n in names:
        if n in d and d[n] is not None:
            return d[n]
    return default


def _vision_from_hf(d: dict) -> VisionConfig:
    base = VisionConfig()
    indices = tuple(_pick(d, "intermediate_layers_indices", default=base.intermediate_layers_indices))
    hidden = _pick(d, "hidden_size", default=base.hidden_size)
    return VisionConfig(
        hidden_size=hidden,
        intermediate_size=_pick(d, "intermediate_size", default=base.intermediate_size),
        num_hidden_layers=_pick(d, "num_hidden_layers", default=base.num_hidden_layers),
        num_global_layers=_pick(d, "num_global_layers", default=base.num_global_layers),
        num_attention_heads=_pick(d, "attention_heads", "num_attention_heads", default=base.num_attention_heads),
        num_channels=_pick(d, "num_channels", default=base.num_channels),
        # transformers' class default is 448 while every released checkpoint says 560: only a file decides.
        image_size=_pick(d, "image_size", default=448),
        patch_size=_pick(d, "patch_size", default=base.patch_size),
        norm_eps=_pick(d, "norm_eps", default=base.norm_eps),
        max_num_tiles=_pick(d, "max_num_tiles", default=base.max_num_tiles),
        hidden_act=_pick(d, "hidden_act", default=base.hidden_act),
        intermediate_layers_indices=indices,
        vision_output_dim=_pick(d, "vision_output_dim", default=hidden * (1 + len(indices))),
        supported_aspect_ratios=tuple(tuple(a) for a in _pick(d, "supported_aspect_ratios",
                                                              default=base.supported_aspect_ratios)),
    )


def _text_from_hf(d: dict) -> TextConfig:
    base = TextConfig()
    # 4.x: rope_theta + rope_scaling; 5.x: rope_parameters holding both.
    rope: Optional[dict] = _pick(d, "rope_parameters", "rope_scaling", default=None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    eos = _pick(d, "eos_token_id", default=base.eos_token_id)
    return TextConfig(
        vocab_size=_pick(d, "vocab_size", default=base.vocab_size),
        hidden_size=_pick(d, "hidden_size", default=base.hidden_size),
        intermediate_size=_pick(d, "intermediate_size", default=base.intermediate_size),
        num_hidden_layers=_pick(d, "num_hidden_layers", default=base.num_hidden_layers),
        num_attention_heads=_pick(d, "num_attention_heads", default=base.num_attention_heads),
        num_key_value_heads=_pick(d, "num_key_value_heads", default=base.num_key_value_heads),
        hidden_act=_pick(d, "hidden_act", default=base.hidden_act),
        rms_norm_eps=_pick(d, "rms_norm_eps", default=base.rms_norm_eps),
        rope_theta=float(_pick(rope, "rope_theta", default=_pick(d, "rope_theta", default=base.rope_theta))),
        rope_type=rope_type,
        rope_factor=float(rope.get("factor", base.rope_factor)),
        rope_low_freq_factor=float(rope.get("low_freq_factor", base.rope_low_freq_factor)),
        rope_high_freq_factor=float(rope.get("high_freq_factor", base.rope_high_freq_factor)),
        rope_original_max_position_embeddings=int(rope.get("original_max_position_embeddings",
                                                           base.rope_original_max_position_embeddings)),
        max_position_embeddings=_pick(d, "max_position_embeddings", default=base.max_position_embeddings),
        cross_attention_layers=tuple(_pick(d, "cross_attention_layers", default=base.cross_attention_layers)),
        bos_token_id=_pick(d, "bos_token_id", default=base.bos_token_id),
        eos_token_id=tuple(eos) if isinstance(eos, (list, tuple)) else (eos,),
        pad_token_id=_pick(d, "pad_token_id", default=base.pad_token_id),
        tie_word_embeddings=bool(_pick(d, "tie_word_embeddings", default=False)),
    )


# --------------------------------------------------------------------------------------------------- presets
def _tiny() -> MllamaConfig:
    """A few-hundred-thousand-parameter model for CPU tests (transformers' own test sizes, indices >= 1)."""
    return MllamaConfig(
        vision=VisionConfig(hidden_size=16, intermediate_size=37, num_hidden_layers=6, num_global_layers=2,
                            num_attention_heads=4, image_size=28, patch_size=4, intermediate_layers_indices=(2, 4),
                            vision_output_dim=48),
        text=TextConfig(vocab_size=128256, hidden_size=32, intermediate_size=37, num_hidden_layers=4,
                        num_attention_heads=4, num_key_value_heads=2, cross_attention_layers=(1,)),
    )


def _mid() -> MllamaConfig:
    """About 160M parameters with the real vocabulary: the size the speed benchmarks use."""
    return MllamaConfig(
        vision=VisionConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_global_layers=2,
                            num_attention_heads=4, image_size=224, patch_size=14, intermediate_layers_indices=(1, 3),
                            vision_output_dim=768),
        text=TextConfig(hidden_size=512, intermediate_size=1536, num_hidden_layers=10, num_attention_heads=8,
                        num_key_value_heads=2, cross_attention_layers=(3, 8)),
    )


def _small() -> MllamaConfig:
    """About 35M parameters (all but 1.5M of them the real vocabulary's embedding and head): the model the main job
    trains from scratch on a CPU. One 84 px tile of 28 px patches, so each cell of the synthetic set's 3 x 3 grid is
    one patch."""
    return MllamaConfig(
        vision=VisionConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_global_layers=1,
                            num_attention_heads=4, image_size=84, patch_size=28, max_num_tiles=1,
                            intermediate_layers_indices=(1,), vision_output_dim=128,
                            supported_aspect_ratios=((1, 1),)),
        text=TextConfig(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                        num_key_value_heads=2, cross_attention_layers=(1, 3)),
    )


def _llama_90b() -> MllamaConfig:
    return MllamaConfig(text=TextConfig(hidden_size=8192, intermediate_size=28672, num_hidden_layers=100,
                                        num_attention_heads=64, num_key_value_heads=8,
                                        cross_attention_layers=tuple(range(3, 100, 5))))


PRESETS = {
    "tiny": _tiny,
    "small": _small,
    "mid": _mid,
    "llama-3.2-11b-vision": MllamaConfig,
    "llama-3.2-90b-vision": _llama_90b,
}


def preset(name: str, **overrides) -> MllamaConfig:
    """A named configuration: 'tiny' (CPU tests), 'small' (the main job), 'mid' (benchmarks), 'llama-3.2-11b-vision',
    'llama-3.2-90b-vision'."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name]().replace(**overrides)
