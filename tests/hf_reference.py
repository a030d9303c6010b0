"""Tiny random transformers Mllama models and inputs shared by the parity tests (transformers is the reference)."""
from __future__ import annotations

import numpy as np

IMAGE_TOKEN = 90

# transformers' own tester sizes, with GQA, llama3 RoPE and two blocks of the 11B layer pattern (cross at 3 and 8).
# RoPE theta 100 at head_dim 8 gives wavelengths 6.3, 19.9, 62.8 and 199 positions: one below llama3's smoothed band
# [64 / high_freq_factor, 64 / low_freq_factor] = [16, 64], two inside it and one above.
HF_CONFIG = {
    "model_type": "mllama",
    "image_token_index": IMAGE_TOKEN,
    "text_config": {
        "model_type": "mllama_text_model", "vocab_size": 99, "hidden_size": 32, "num_hidden_layers": 10,
        "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 37, "hidden_act": "silu",
        "max_position_embeddings": 512, "rope_theta": 100.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 64},
        "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "cross_attention_layers": [3, 8],
    },
    "vision_config": {
        "image_size": 30, "patch_size": 2, "num_channels": 3, "hidden_size": 16, "intermediate_layers_indices": [2, 4],
        "vision_output_dim": 48, "num_hidden_layers": 6, "num_global_layers": 2, "attention_heads": 4,
        "intermediate_size": 37, "max_num_tiles": 4,
        "supported_aspect_ratios": [[1, 1], [1, 2], [1, 3], [1, 4], [2, 1], [2, 2], [3, 1], [4, 1]],
    },
}
# Wide enough for bf16 rounding to show in the text decoder (hidden 256, 8 heads of 64), still quick to build.
WIDE_CONFIG = {
    **HF_CONFIG,
    "text_config": dict(HF_CONFIG["text_config"], hidden_size=256, num_attention_heads=8, intermediate_size=512,
                        num_hidden_layers=5, cross_attention_layers=[3]),
    "vision_config": dict(HF_CONFIG["vision_config"], hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                          num_global_layers=1, intermediate_layers_indices=[0, 2], vision_output_dim=192),
}
# aspect ratio id -> number of tiles (ids index supported_aspect_ratios from 1)
TILES = {1: 1, 2: 2, 3: 3, 4: 4, 5: 2, 6: 4, 7: 3, 8: 4}


def make_hf_model(seed: int = 0, config: dict = HF_CONFIG):
    """A random eager-attention float32 transformers model with non-zero gates and embeddings."""
    import torch
    from transformers import MllamaConfig, MllamaForConditionalGeneration

    torch.manual_seed(seed)
    cfg = MllamaConfig(**{k: v for k, v in config.items() if k != "model_type"})
    cfg._attn_implementation = "eager"
    model = MllamaForConditionalGeneration(cfg).eval().float()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "gate" in name:
                p.copy_(torch.randn_like(p) * 0.5 + 0.3)
            elif "embedding" in name or "norm" in name:
                p.copy_(p + torch.randn_like(p) * 0.1)
    return model


def saved_hf_model(directory, seed: int = 0, config: dict = HF_CONFIG):
    """`make_hf_model(seed, config)` saved as safetensors under `directory`; returns (model, directory)."""
    model = make_hf_model(seed, config)
    model.save_pretrained(directory, safe_serialization=True)
    return model, directory


def make_batch(rng: np.random.Generator, aspect_ratio_ids, seq_len: int, image_positions, vocab: int = 99,
               image_size: int = 30, left_pad=None):
    """Inputs in transformers' format. aspect_ratio_ids [B][I] (0 = padding image); image_positions [B][I]: where each
    image token sits (-1 for a padding image). Each token attends to the most recent image, as the processor makes it."""
    b, n_img = len(aspect_ratio_ids), len(aspect_ratio_ids[0])
    ids = rng.integers(3, vocab, (b, seq_len))
    ids[ids == IMAGE_TOKEN] = 5
    pixel_values = np.zeros((b, n_img, 4, 3, image_size, image_size), np.float32)
    ar_mask = np.zeros((b, n_img, 4), np.int64)
    ar_mask[:, :, 0] = 1
    cross = np.zeros((b, seq_len, n_img, 4), np.int64)
    for i in range(b):
        positions = image_positions[i]
        for j, ar in enumerate(aspect_ratio_ids[i]):
            if ar == 0:
                continue
            tiles = TILES[ar]
            pixel_values[i, j, :tiles] = rng.normal(size=(tiles, 3, image_size, image_size))
            ar_mask[i, j, :tiles] = 1
            ids[i, positions[j]] = IMAGE_TOKEN
            later = [p for p in positions if p > positions[j]]
            cross[i, positions[j]:(min(later) if later else seq_len), j, :tiles] = 1
    attention_mask = np.ones((b, seq_len), np.int64)
    if left_pad is not None:
        for i, n in enumerate(left_pad):
            attention_mask[i, :n] = 0
            ids[i, :n] = 0
    return dict(input_ids=ids, attention_mask=attention_mask, pixel_values=pixel_values,
                aspect_ratio_ids=np.asarray(aspect_ratio_ids, np.int64), aspect_ratio_mask=ar_mask,
                cross_attention_mask=cross)


def hf_logits(model, batch: dict) -> np.ndarray:
    """The model's float32 logits; floating inputs are cast to the model's dtype first."""
    import torch

    dtype = next(model.parameters()).dtype
    inputs = {k: torch.from_numpy(np.asarray(v)) for k, v in batch.items()}
    with torch.no_grad():
        out = model(**{k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()})
    return out.logits.float().numpy()


def relative_error(ours, ref, mask=None) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    if mask is not None:
        ours, ref = ours[mask.astype(bool)], ref[mask.astype(bool)]
    return float(np.abs(ours - ref).max() / np.abs(ref).max())
