"""Building both datasets as ArrayRecord without TensorFlow, reading them back, and the validation of LLaVA-CoT records."""
import io
import json
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from llavao1_jax.data import build, formats, synthetic_reasoning as sr
from llavao1_jax.data.llava_cot_100k import InvalidRecordError

ANSWER = ("<SUMMARY> Look at the bar. </SUMMARY>\n\n<CAPTION> A red square. </CAPTION>\n\n"
          "<REASONING> The square is red. </REASONING>\n\n<CONCLUSION> red </CONCLUSION>")


def _turns(*values):
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(values)]


@pytest.fixture(scope="module")
def llava_copy(tmp_path_factory):
    """A small LLaVA-CoT-style jsonl + image root: 3 good records and one bad record per listed reason.

    Returns (jsonl path, image root, {line: expected reason}, {line: record} of the good ones).
    """
    root = tmp_path_factory.mktemp("llava")
    images = root / "images"
    for folder in ("sqa/train/1", "chartqa/train", "CLEVR_v1.0/images"):
        (images / folder).mkdir(parents=True)
    Image.new("RGB", (40, 30), (200, 20, 20)).save(images / "sqa/train/1/image.png")
    Image.new("RGB", (25, 50), (20, 200, 20)).save(images / "chartqa/train/c.jpg", format="JPEG")
    Image.new("RGB", (60, 60), (20, 20, 200)).save(images / "CLEVR_v1.0/images/x.png")
    (images / "sqa/train/1/corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    out_of_order = ANSWER.replace("SUMMARY", "TMP").replace("CAPTION", "SUMMARY").replace("TMP", "CAPTION")
    good = {
        1: {"id": "a", "image": "sqa/train/1/image.png", "conversations": _turns("What color?", ANSWER)},
        5: {"id": 7, "image": "chartqa/train/c.jpg", "conversations": _turns("<image>\nWhat color?", ANSWER)},
        9: {"id": "c", "image": "CLEVR_v1.0/images/x.png", "conversations": _turns("Q1", ANSWER, "Q2", ANSWER)},
    }
    lines = {
        2: b'{"id": "b", "image": "sqa/train/1/image.png", "conversations": [',
        3: {"id": "d", "image": "sqa/train/1/missing.png", "conversations": _turns("Q", ANSWER)},
        4: {"id": "e", "image": "sqa/train/1/corrupt.png", "conversations": _turns("Q", ANSWER)},
        6: {"id": "f", "image": "sqa/train/1/image.png", "conversations": _turns("Q", "red")},
        7: {"id": "g", "image": "sqa/train/1/image.png", "conversations": _turns("Q", out_of_order)},
        8: {"id": "h", "image": "sqa/train/1/image.png", "conversations": []},
        10: '{"id": "i", "image": "sqa/train/1/image.png", "conversations": []}'.encode("utf-16"),
        11: b"",  # a blank line is not a record
        12: {"id": "j", "image": "sqa/train/1/image.png", "conversations": _turns("Q", ANSWER, "Q2")},
        13: {"id": "k", "image": "sqa/train/1/image.png"},
    }
    lines.update(good)
    reasons = {2: "invalid_json", 3: "image_missing", 4: "image_undecodable", 6: "missing_tags", 7: "tags_out_of_order",
               8: "empty_conversation", 10: "not_utf8", 12: "roles_not_alternating", 13: "missing_field"}
    jsonl = root / "train.jsonl"
    with jsonl.open("wb") as f:
        for n in sorted(lines):
            line = lines[n]
            f.write((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n")
    return jsonl, images, reasons, good


def test_llava_build_skips_and_reports(llava_copy, tmp_path):
    jsonl, images, reasons, good = llava_copy
    report = build.build_llava_cot_100k(jsonl, images, tmp_path, num_workers=2)
    assert report["kept"] == len(good) and report["skipped"] == len(reasons)
    assert report["by_reason"] == {reason: 1 for reason in reasons.values()}
    assert {e["line"]: e["reason"] for e in report["examples"]} == reasons

    source = tfds.data_source("llava_cot_100k", split="train", data_dir=tmp_path)
    assert len(source) == len(good)
    records = sorted((source[i] for i in range(len(source))), key=lambda r: r["id"])
    assert [r["id"] for r in records] == [b"7", b"a", b"c"]
    line_of = {str(g["id"]): n for n, g in good.items()}
    for record in records:
        original = good[line_of[record["id"].decode()]]
        path = images / original["image"]
        assert record["image"] == path.read_bytes()  # original encoded bytes, untouched
        assert (record["width"], record["height"]) == Image.open(path).size
        assert record["image_path"].decode() == original["image"]
        assert record["source"].decode() == original["image"].split("/")[0]
        assert [v.decode() for v in record["conversations"]["from"]] == [t["from"] for t in original["conversations"]]
        values = [v.decode() for v in record["conversations"]["value"]]
        assert values == [t["value"].replace("<image>\n", "") for t in original["conversations"]]
    # The report is kept with the data: a second build reuses it without regenerating.
    assert build.build_llava_cot_100k(jsonl, images, tmp_path) == report
    assert "tensorflow" not in sys.modules


def test_llava_strict_mode_names_the_line(llava_copy, tmp_path):
    jsonl, images, _, _ = llava_copy
    with pytest.raises(InvalidRecordError, match=rf"^{jsonl}:2: invalid_json: "):
        build.build_llava_cot_100k(jsonl, images, tmp_path, strict=True)
    assert not tfds.builder("llava_cot_100k", data_dir=tmp_path).is_prepared()


def test_cli(llava_copy, tmp_path, capsys):
    jsonl, images, reasons, good = llava_copy
    report_path = tmp_path / "report.json"
    argv = ["llava_cot_100k", "--jsonl", str(jsonl), "--image-root", str(images), "--data-dir", str(tmp_path / "a"),
            "--report", str(report_path)]
    assert build.main(argv) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"kept {len(good)} records, skipped {len(reasons)}"
    report = json.loads(report_path.read_text())
    assert set(report) == {"kept", "skipped", "by_reason", "examples"} and report["skipped"] == len(reasons)

    assert build.main(argv[:-2] + ["--data-dir", str(tmp_path / "b"), "--strict"]) == 1
    assert f"{jsonl}:2: invalid_json" in capsys.readouterr().err
    missing = ["llava_cot_100k", "--jsonl", str(tmp_path / "nope.jsonl"), "--image-root", str(images), "--data-dir",
               str(tmp_path / "c")]
    assert build.main(missing) == 1
    assert "jsonl file not found" in capsys.readouterr().err
    missing = ["llava_cot_100k", "--jsonl", str(jsonl), "--image-root", str(tmp_path / "nope"), "--data-dir",
               str(tmp_path / "c")]
    assert build.main(missing) == 1
    assert "image root is not a directory" in capsys.readouterr().err
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    nothing_valid = ["llava_cot_100k", "--jsonl", str(tmp_path / "bad.jsonl"), "--image-root", str(images),
                     "--data-dir", str(tmp_path / "d")]
    assert build.main(nothing_valid) == 1
    assert "no valid records" in capsys.readouterr().err

    synthetic = ["synthetic_reasoning", "--num-train", "12", "--num-test", "4", "--seed", "3", "--data-dir",
                 str(tmp_path / "s")]
    assert build.main(synthetic) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "kept 16 records, skipped 0"
    assert build.main(synthetic[:2] + ["13"] + synthetic[3:]) == 1  # same dir, other parameters
    assert "--overwrite" in capsys.readouterr().err
    assert build.main(synthetic[:2] + ["13"] + synthetic[3:] + ["--overwrite"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "kept 17 records, skipped 0"
    assert build.main(synthetic[:-1] + [str(tmp_path / "t"), "--question-types", "count,colour"]) == 1
    assert "question_types must be distinct names" in capsys.readouterr().err
    assert not (tmp_path / "t" / "synthetic_reasoning").exists()
    assert build.main(synthetic[:-1] + [str(tmp_path / "t"), "--question-types", "position_choice,count",
                                        "--caption-style", "numbered"]) == 0
    source = tfds.data_source("synthetic_reasoning", split="train", data_dir=tmp_path / "t")
    assert {source[i]["question_type"].decode() for i in range(len(source))} == {"position_choice", "count"}
    assert source[0]["caption"].decode().startswith("Cells: 1 ")


def test_synthetic_build_reads_back(tmp_path):
    counts = build.build_synthetic_reasoning(tmp_path, num_train=30, num_test=8, seed=4, image_size=64)
    assert counts == {"train": 30, "test": 8}
    builder = tfds.builder("synthetic_reasoning", data_dir=tmp_path)
    assert dict(builder.info.metadata["params"]) == {"num_train": 30, "num_test": 8, "seed": 4, "image_size": 64,
                                                      "judge_fraction": 0.0, "caption_style": "objects",
                                                      "background": "light",
                                                      "question_types": list(sr.DEFAULT_QUESTION_TYPES)}
    for split, n in counts.items():
        source = tfds.data_source("synthetic_reasoning", split=split, data_dir=tmp_path)
        got = {source[i]["id"].decode(): source[i] for i in range(len(source))}
        assert sorted(got) == [f"{split}-{i:07d}" for i in range(n)]
        for i in (0, n - 1):
            record, expected = got[f"{split}-{i:07d}"], sr.make_example(4, split, i, 64)
            assert record["image"] == expected["image"]
            assert np.asarray(Image.open(io.BytesIO(record["image"]))).shape == (64, 64, 3)
            assert record["answer"].decode() == expected["answer"]
            assert [c.decode() for c in record["choices"]] == expected["choices"]
            assert [s.decode() for s in record["reasoning"]] == expected["reasoning"]
            assert record["question_type"].decode() in sr.QUESTION_TYPES
            tagged = record["conversations"]["value"][1].decode()
            assert formats.parse_stages(tagged).conclusion == expected["answer"]
