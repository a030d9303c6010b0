"""The ml_collections view of `lj.SearchConfig` (the same fields and defaults), for command lines and sweeps.

    get_config("method=stage,n=2,judge=logprob")  ->  lj.SearchConfig.from_dict(config.to_dict())
"""
import dataclasses

import ml_collections

from llavao1_jax.config_utils import parse_arg
from llavao1_jax.search.config import SearchConfig, SwiresConfig

_PLAIN = {f.name: f.default for f in dataclasses.fields(SearchConfig)
          if f.name not in ("swires", "reward_fn", "batch_questions")}


def get_config(arg=None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(parse_arg(arg, **_PLAIN).to_dict())
    config.batch_questions = ml_collections.FieldReference(None, field_type=int)
    config.swires = ml_collections.ConfigDict(dataclasses.asdict(SwiresConfig()))
    return config
