"""Data: TFDS builders (LLaVA-CoT-100k from a local copy, the synthetic reasoning set) and the SFT input pipeline.

Build with `python -m llavao1_jax.data.build ...`; datasets are ArrayRecord, read back with `tfds.data_source` (no
TensorFlow needed). Importing this package registers both builders with TFDS.
"""
from llavao1_jax.data import llava_cot_100k, synthetic_reasoning  # noqa: F401  (registers the builders)
