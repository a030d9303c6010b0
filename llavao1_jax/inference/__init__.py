"""Generation: jitted prefill and an on-device decode loop over a static KV cache, with sampling, stop tokens and
stop strings, and row operations (fork, select, teacher forcing) for searches.

* generator.py: `Generator` (a model prepared once: `prefill`, `prefill_on_images`, `append_tokens`, `decode`,
  `generate`), `Decoder`, `GenerationResult`, and `generate` (one call).
* state.py: `DecodeState`, `Generation`, `fork`, `select_rows`, `compact`, `reseed`, `cache_bytes`.
* engine.py: the jitted device functions; decoding_model.py: the model as they take it (per-layer layout, split,
  CPU LM-head copy); sampling.py: `SamplingConfig`, `next_tokens`;
  stop_strings.py: token-id stop-string automata; sharding.py: logical-axis constraints of the decode state.
"""
from llavao1_jax.inference.generator import Decoder, GenerationResult, Generator, bucket_length, generate
from llavao1_jax.inference.sampling import SamplingConfig
from llavao1_jax.inference.state import (FINISH_REASONS, DecodeState, cache_bytes, compact, fork, reseed,
                                         select_rows)

__all__ = ["Decoder", "DecodeState", "FINISH_REASONS", "GenerationResult", "Generator", "SamplingConfig",
           "bucket_length", "cache_bytes", "compact", "fork", "generate", "reseed", "select_rows"]
