"""The Llama-3.2-Vision model: config, Flax NNX modules and Hugging Face checkpoint I/O."""
from llavao1_jax.model.config import MllamaConfig, TextConfig, VisionConfig, preset
from llavao1_jax.model.mllama import Mllama, init_model, relayout
from llavao1_jax.model.text import KVCache
