"""The main job end to end at a reduced size: it trains, evaluates every method, writes results.json with numbers,
the plot and the trainer's outputs, and a rerun in the same workdir resumes instead of redoing the work."""
import json

import numpy as np
import pytest
from PIL import Image

from configs.tiny_reasoner import get_config
from llavao1_jax import main
from llavao1_jax.reasoner import job, report


def small_config():
    config = get_config("steps=3,questions=3,train=32")
    config.checkpoint_every = 3
    config.evaluation.search.max_stage_tokens = 6
    config.evaluation.search.judge_max_tokens = 4
    del config.methods["best_of_4"], config.methods["stage_4"]
    config.example_method = "stage_2"
    return config


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("main_job")
    config = small_config()
    return workdir, config, job.run(config, workdir)


def test_results_hold_every_method_with_numbers(finished):
    workdir, _, results = finished
    assert list(results["methods"]) == ["greedy", "best_of_2", "stage_2"]
    saved = json.loads((workdir / report.RESULTS).read_text())
    assert saved == results
    for figures in saved["methods"].values():
        assert figures["questions"] == 3
        for key in ("format_validity", "accuracy"):
            assert 0.0 <= figures[key] <= 100.0
        assert figures["tokens_per_question"] > 0 and figures["seconds_per_question"] > 0
    assert saved["methods"]["stage_2"]["tokens_per_question"] > saved["methods"]["greedy"]["tokens_per_question"]
    assert 0.0 <= saved["image_blind_accuracy"] <= 100.0
    assert saved["train_seconds"] > 0 and saved["eval_seconds"] > 0


def test_workdir_holds_the_plot_and_the_trainers_outputs(finished):
    workdir, _, _ = finished
    with Image.open(workdir / report.PLOT) as image:
        assert image.size[0] > 300 and np.asarray(image.convert("L")).std() > 10  # a drawn figure, not blank
    for name in ("config.json", "metrics.jsonl", "checkpoints", "hf/model.safetensors", "hf/task_vocabulary.json",
                 "eval/greedy/predictions.jsonl", "eval/stage_2/summary.json"):
        assert (workdir / name).exists(), name


def test_rerun_resumes_without_training_or_decoding_again(finished, capsys):
    workdir, config, results = finished
    again = job.run(config, workdir)
    assert again["methods"] == results["methods"]
    assert again["train_seconds"] == results["train_seconds"]  # no training time added
    main.print_summary(workdir, again, config)
    printed = capsys.readouterr().out
    assert "| greedy |" in printed and "Example (stage_2)" in printed and str(workdir / "hf") in printed


@pytest.mark.parametrize("judges", [0.0, 0.5])
def test_buckets_hold_every_record_of_the_job(tmp_path, judges):
    """Nothing the job trains on is truncated: questions fit the first bucket, judge records the last one."""
    from llavao1_jax.data import pipeline
    from llavao1_jax.processor import Processor
    from llavao1_jax.train import data

    config = get_config(f"train=60,questions=4,judges={judges}")
    d = config.data
    encode = pipeline.EncodeSample(Processor.llama3_2_vision(tile_size=84, max_image_tiles=1), "tagged", 10_000)
    source = pipeline.host_source("synthetic_reasoning", "train", data.dataset_dir(config, tmp_path))
    lengths = {"answer": [], "judge": []}
    for i in range(len(source)):
        lengths["judge" if source[i]["task"].decode().startswith("judge") else "answer"].append(
            len(encode(source[i])["input_ids"]))
    assert len(lengths["judge"]) == round(judges * d.num_train)
    assert max(lengths["answer"]) <= d.buckets[0] and max(lengths["judge"], default=0) <= d.buckets[-1]
    assert config.evaluation.search.judge_max_tokens == (32 if judges else 16)
