"""Generation: jitted prefill and an on-device decode loop over a static KV cache, with sampling, stop tokens and
stop strings, and row operations (fork, select, teacher forcing) for searches.

* api.py: `generate` (one call), `prefill`, `append_tokens`, `Decoder` / `decode`, `GenerationResult`.
* state.py: `DecodeState`, `Generation`, `fork`, `select_rows`, `reseed`, `cache_bytes`.
* engine.py: the jitted device functions; decoding_model.py: the model as they take it (per-layer layout, split,
  CPU LM-head copy); sampling.py: `SamplingConfig`, `next_tokens`;
  stop_strings.py: token-id stop-string automata; sharding.py: logical-axis constraints of the decode state.
"""
from llavao1_jax.inference.api import (Decoder, GenerationResult, append_tokens, bucket_length, decode, generate,
                                       prefill)
from llavao1_jax.inference.sampling import SamplingConfig
from llavao1_jax.inference.state import FINISH_REASONS, DecodeState, cache_bytes, fork, reseed, select_rows

__all__ = ["Decoder", "DecodeState", "FINISH_REASONS", "GenerationResult", "SamplingConfig", "append_tokens",
           "bucket_length", "cache_bytes", "decode", "fork", "generate", "prefill", "reseed", "select_rows"]
