"""llavao1_jax: LLaVA-o1 (LLaVA-CoT) on Llama-3.2-Vision in JAX/Flax.

The public names are resolved lazily so that `import llavao1_jax` stays cheap and each part
(model, processor, data, inference) imports only what it needs.
"""
from llavao1_jax.lazy import lazy_getattr

_EXPORTS = {
    # model
    "MllamaConfig": "llavao1_jax.model.config",
    "Mllama": "llavao1_jax.model.mllama",
    "init_model": "llavao1_jax.model.mllama",
    "load_pretrained": "llavao1_jax.model.hf_checkpoint",
    "save_pretrained": "llavao1_jax.model.hf_checkpoint",
    # processor
    "Processor": "llavao1_jax.processor",
    # inference
    "Generator": "llavao1_jax.inference",
    "generate": "llavao1_jax.inference",
    # search (`lj.search(...)` calls the subpackage, which is callable: see llavao1_jax/search/__init__.py)
    "SearchConfig": "llavao1_jax.search",
    "search": "llavao1_jax.search",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
