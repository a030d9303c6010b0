"""Processor: Llama-3.2-Vision tokenizer, chat template, tiled image preprocessing and cross-attention masks.

Everything between a user's images + text and Mllama's input arrays, identical to transformers 4.54.1 `MllamaProcessor`.
Public names are imported lazily so that the image side (numpy/PIL only) does not pull in transformers:

* `Processor` (processor.py): `Processor.llama3_2_vision(tile_size=560, max_image_tiles=4)`,
  `Processor.from_pretrained`, `save_pretrained`, `__call__(images, text, padding=..., padding_side=...)`,
  `apply_chat_template`, `decode`.
* `ImageProcessor`, `TiledImage` (image_processing.py): `preprocess(image)` for one image, `pack(...)` and `__call__`
  for batches; `load_image` (image_io.py).
* `cross_attention_mask`, `image_spans` (masks.py); `build_tokenizer` (tokenizer.py); `CHAT_TEMPLATE`
  (chat_template.py).
"""
from llavao1_jax.lazy import lazy_getattr

_EXPORTS = {
    "Processor": "llavao1_jax.processor.processor",
    "ImageProcessor": "llavao1_jax.processor.image_processing",
    "TiledImage": "llavao1_jax.processor.image_processing",
    "load_image": "llavao1_jax.processor.image_io",
    "cross_attention_mask": "llavao1_jax.processor.masks",
    "image_spans": "llavao1_jax.processor.masks",
    "build_tokenizer": "llavao1_jax.processor.tokenizer",
    "CHAT_TEMPLATE": "llavao1_jax.processor.chat_template",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
