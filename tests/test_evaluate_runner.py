"""The evaluation runner on a tiny random model: greedy and stage search runs write predictions, tables, summary
and VLMEvalKit's prediction file; an interrupted run resumes to the same file without duplicates; undecodable
images are skipped and counted, or fatal with `strict`."""
import base64
import io
import json

import numpy as np
import pandas as pd
import PIL.Image
import pytest

import llavao1_jax as lj
from llavao1_jax.evaluate.runner import run
from evaluate_files import eval_config as _eval_config, write_tsv
from tiny_model import tiny_model_and_processor


def _noise_base64(seed):
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    PIL.Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """MMStar rows 0-2 with images, row 3 with an undecodable one."""
    bad = base64.b64encode(b"this is no image, and it is longer than sixty-four characters in all").decode()
    return write_tsv(tmp_path_factory.mktemp("runner") / "MMStar.tsv", [
        dict(index=i, question=f"Question {i}?", answer="A", category="math" if i < 2 else "science", A="one",
             B="two", image=_noise_base64(i) if i != 3 else bad) for i in range(4)])


@pytest.fixture(scope="module")
def setup(bench):
    _, generator, processor = tiny_model_and_processor()
    return generator, processor, bench


def _search(config):
    return lj.SearchConfig.from_dict(config.search.to_dict())


def test_greedy_run_resumes_after_interruption(setup, tmp_path):
    generator, processor, bench = setup
    config = _eval_config(benchmark=str(bench), limit=3, batch_size=1)  # one shape: compiled once
    summary = run(config, tmp_path / "full", generator, processor, _search(config))
    full = (tmp_path / "full" / "predictions.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in full]
    assert [r["index"] for r in records] == [0, 1, 2]
    assert set(records[0]) == {"index", "output", "conclusion", "extracted", "hit", "tokens", "generated_tokens",
                               "seconds"}
    assert all(1 <= r["tokens"] <= 64 and r["seconds"] > 0 for r in records)
    assert summary["n"] == 3 and summary["rows_run"] == 3
    assert summary["overall"] == pytest.approx(100 * np.mean([r["hit"] for r in records]))
    assert json.loads((tmp_path / "full" / "summary.json").read_text())["n"] == 3
    assert (tmp_path / "full" / "MMStar_acc.csv").exists()
    vlmevalkit = pd.read_excel(tmp_path / "full" / "llavao1_jax_MMStar.xlsx")
    assert "image" not in vlmevalkit.columns and list(vlmevalkit["index"]) == [0, 1, 2]
    assert list(vlmevalkit["prediction"]) == [r["output"] for r in records]

    # An interrupted run: the first record whole, the second cut mid-line.
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "predictions.jsonl").write_text(full[0] + "\n" + full[1][:20])
    run(config, tmp_path / "cut", generator, processor, _search(config))
    resumed = (tmp_path / "cut" / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(line)["index"] for line in resumed] == [0, 1, 2]
    assert [json.loads(line)["output"] for line in resumed] == [r["output"] for r in records]


@pytest.mark.slow
def test_stage_search_run_skips_and_counts_undecodable_images(setup, tmp_path):
    generator, processor, bench = setup
    config = _eval_config(benchmark=str(bench), batch_size=4)
    config.search.method = "stage"
    config.search.n = 2
    summary = run(config, tmp_path / "stage", generator, processor, _search(config))
    assert summary["skipped_images"] == ["3"] and summary["n"] == 3 and summary["rows_run"] == 4
    records = [json.loads(line) for line in (tmp_path / "stage" / "predictions.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == [0, 1, 2]


def test_strict_run_fails_on_an_undecodable_image_before_generating(bench, tmp_path):
    config = _eval_config(benchmark=str(bench), batch_size=4, strict=True)
    with pytest.raises(ValueError, match=r"MMStar.tsv: row 3, column 'image': undecodable"):
        run(config, tmp_path, None, None, _search(config))
    assert (tmp_path / "predictions.jsonl").read_text() == ""


def test_predictions_of_other_rows_are_an_error(bench, tmp_path):
    (tmp_path / "predictions.jsonl").write_text(json.dumps({"index": 42, "output": "A"}) + "\n")
    with pytest.raises(ValueError, match=r"index\(es\) \['42'\] are not among the rows"):
        run(_eval_config(benchmark=str(bench)), tmp_path, None, None, _search(_eval_config()))


def test_search_batches_smaller_than_the_runners_are_an_error(bench, tmp_path):
    config = _eval_config(benchmark=str(bench), batch_size=4)
    config.search.batch_questions = 2
    with pytest.raises(ValueError, match=r"config.search.batch_questions \(2\) is below config.batch_size \(4\)"):
        run(config, tmp_path, None, None, _search(config))
