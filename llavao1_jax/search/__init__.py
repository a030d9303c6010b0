"""Inference-time search over the generation engine: stage-level beam search with the self-judge (LLaVA-o1),
best-of-N, sentence-level beam search, plain greedy and sampled answers.

* api.py: `search(model, processor, questions, config)` -> [`SearchResult`], also `lj.search(...)`;
* config.py: `SearchConfig`, `SwiresConfig`;
* methods.py: the methods on one batch of questions; candidates.py: sampling a step's candidates;
  judges.py: the knockout tournament, the reasoning pre-check, log-probability and reward scores;
  prompts.py: the judge's texts and token segments; packing.py: ragged segments into one masked array;
  batch.py: the state of one batch of questions; result.py: `SearchResult`, trace counters;
* compiled.py: `CompiledStageSearch`, the stage search of a batch as one jitted function (stage_program.py) for
  judge="logprob" and judge="self".
"""
import sys
import types

from llavao1_jax.search.api import search
from llavao1_jax.search.config import SearchConfig, SwiresConfig
from llavao1_jax.search.result import SearchResult

__all__ = ["SearchConfig", "SearchResult", "SwiresConfig", "search"]


class _CallablePackage(types.ModuleType):
    """Python binds a subpackage to its parent's attribute of the same name, so `llavao1_jax.search` (this folder)
    and `lj.search` (the function) are one object: this package, which calls `search` when called."""

    def __call__(self, *args, **kwargs):
        return search(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
