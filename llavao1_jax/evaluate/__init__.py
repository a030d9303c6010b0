"""Evaluation on VLMEvalKit's benchmark files, reproducing its rule-based scores (docs/evaluation.md).

    from llavao1_jax import evaluate as ev
    bench = ev.read_benchmark("MMStar.tsv")
    report = ev.score("MMStar.tsv", "predictions.jsonl", rules="p24", answer_from="conclusion")
    ev.write_synthetic_benchmark(data_dir, "synthetic_reasoning_test.tsv")   # our synthetic set's held-out split
"""
from llavao1_jax.evaluate.api import score
from llavao1_jax.evaluate.benchmarks import KINDS, Benchmark, Row, kind_from_name, read_benchmark
from llavao1_jax.evaluate.extraction import conclusion, extract_option, extract_yes_no, format_valid
from llavao1_jax.evaluate.predictions import read_predictions
from llavao1_jax.evaluate.prompts import chat_prompt, question_prompt
from llavao1_jax.evaluate.synthetic import write_synthetic_benchmark

__all__ = ["KINDS", "Benchmark", "Row", "chat_prompt", "conclusion", "extract_option", "extract_yes_no",
           "format_valid", "kind_from_name", "question_prompt", "read_benchmark", "read_predictions", "score",
           "write_synthetic_benchmark"]
