"""Small benchmark TSVs in VLMEvalKit's exact layouts (tab-separated, header first, cells quoted only where they hold
a tab, newline or quote, as pandas' `to_csv` writes them), with base64 PNG images of one flat colour each; and
configs/eval.py's config with small search budgets, for runner tests."""
import base64
import csv
import importlib.util
import io
from pathlib import Path

from PIL import Image

HEADERS = {
    "MMStar": ["index", "question", "answer", "category", "A", "B", "C", "D", "image"],
    "MMBench_DEV_EN_V11": ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image",
                           "source", "l2-category", "comment", "split"],
    "AI2D_TEST": ["index", "question", "A", "B", "C", "D", "answer", "category", "abcLabel", "image_path", "image"],
    "HallusionBench": ["index", "image", "question", "answer", "category", "l2-category"],
    "MathVista_MINI": ["index", "image", "question", "answer", "question_type", "answer_type", "precision",
                       "answer_option", "choices", "task", "skills"],
    "MMVet": ["index", "image", "question", "answer", "category"],
}


def png_base64(colour, mode="RGB", size=(4, 4)) -> str:
    """A base64 PNG of one flat `colour`."""
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def write_tsv(path, rows, header=None):
    """Writes `rows` (dicts; absent keys are empty cells) under `header` (default: VLMEvalKit's for the file's
    stem) and returns the path."""
    header = header or HEADERS[path.stem]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        writer.writerows([str(row.get(c, "")) for c in header] for row in rows)
    return path


def eval_config(**overrides):
    """configs/eval.py's config with stage budgets of 3 tokens, then `overrides`."""
    spec = importlib.util.spec_from_file_location("eval_config", Path(__file__).resolve().parents[1] / "configs" /
                                                  "eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.search.max_stage_tokens = 3
    config.search.judge_max_tokens = 3
    config.update(overrides)
    return config
