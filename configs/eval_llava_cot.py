"""The paper's evaluation of LLaVA-CoT: a trained 11B checkpoint on VLMEvalKit's benchmark TSVs, with the paper's
sampling settings and stage-level beam search (N = 2, the setting of its reported results), bfloat16.

    # the six benchmarks of the paper, one run each; LMUData is VLMEvalKit's folder of TSVs (MMStar.tsv, ...)
    for b in MMStar MMBench_TEST_EN AI2D_TEST HallusionBench MathVista_MINI MMVet; do
      python -m llavao1_jax.evaluate --config configs/eval_llava_cot.py:benchmark=$b,lmu_data=~/LMUData \\
          --config.model=runs/llava_cot_11b/hf --workdir runs/eval_llava_cot/$b
    done
    # greedy decoding instead of the search (the paper's "no scaling" column)
    python -m llavao1_jax.evaluate --config configs/eval_llava_cot.py:benchmark=MMStar,method=greedy ...

`--config.model` is any transformers-format Mllama directory (our trainer's `hf/` export, or a downloaded
LLaVA-CoT checkpoint). The MMBench and MathVista rows the rule-based path cannot decide are written to a
judge-ready file for VLMEvalKit's GPT judge (docs/evaluation.md).
"""
from pathlib import Path

from llavao1_jax.config_utils import load_config_module, parse_arg


def get_config(arg=None):
    args = parse_arg(arg, benchmark="MMStar", lmu_data="~/LMUData", method="stage", n=2)
    config = load_config_module(Path(__file__).with_name("eval.py")).get_config()
    config.benchmark = str(Path(args.lmu_data).expanduser() / f"{args.benchmark}.tsv")
    config.dtype = "bfloat16"
    config.batch_size = 8
    config.search.method = args.method
    config.search.n = args.n
    config.search.judge = "self"
    config.search.verdict = "generate"          # the judge writes "Since ..., I choose response k."
    config.search.temperature, config.search.top_p = 0.6, 0.9
    config.search.max_stage_tokens = 2048        # the original's budget per call
    config.search.judge_max_tokens = 2048
    return config
