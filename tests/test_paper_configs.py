"""The paper-reproduction evaluation config builds a valid search config with the paper's settings."""
from pathlib import Path

import llavao1_jax as lj
from llavao1_jax.config_utils import load_config_module

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_eval_llava_cot_is_the_papers_stage_search():
    config = load_config_module(CONFIGS / "eval_llava_cot.py").get_config("benchmark=AI2D_TEST,lmu_data=/data/lmu")
    assert config.benchmark == "/data/lmu/AI2D_TEST.tsv"
    search = lj.SearchConfig.from_dict(config.search.to_dict())  # every field is one SearchConfig knows
    assert (search.method, search.n, search.judge, search.verdict) == ("stage", 2, "self", "generate")
    assert (search.temperature, search.top_p, search.max_stage_tokens) == (0.6, 0.9, 2048)
    greedy = load_config_module(CONFIGS / "eval_llava_cot.py").get_config("method=greedy")
    assert lj.SearchConfig.from_dict(greedy.search.to_dict()).method == "greedy"
