"""The streaming command line on a tiny random checkpoint with the real vocabulary and the packaged tokenizer."""
import io

import numpy as np
import PIL.Image
import pytest

import llavao1_jax as lj
from llavao1_jax import inference
from llavao1_jax.cli import generate as cli
from llavao1_jax.model import preset


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    lj.save_pretrained(lj.init_model(preset("tiny"), seed=0), root / "model")
    PIL.Image.fromarray((np.random.default_rng(0).random((40, 60, 3)) * 255).astype(np.uint8)).save(root / "a.png")
    return root


def test_streams_the_answer_in_chunks(files, monkeypatch):
    args = cli.parse_args(["--model", str(files / "model"), "--image", str(files / "a.png"), "--prompt", "Hi?",
                           "--max-new-tokens", "12", "--min-new-tokens", "12", "--chunk", "5"])
    model = lj.load_pretrained(args.model, scan_layers=False)
    processor = cli.load_processor(files / "model", model)
    batch = processor(images=[args.image], text=cli.prompt_text(processor, args))
    writes = []
    out = io.StringIO()
    monkeypatch.setattr(out, "write", lambda s: writes.append(s) or len(s))
    result = cli.stream(inference.Generator(model), processor, batch, args, out=out)
    assert result.lengths[0] == 12 and result.finish_reason[0] == "length"
    assert "".join(writes) == result.texts[0] + "\n"
    assert len(writes) == 4  # chunks of 5, 5 and 2 tokens, then the newline


def test_errors_are_reported_not_raised(files, capsys):
    assert cli.main(["--model", str(files / "model"), "--image", str(files / "missing.png"), "--prompt", "x"]) == 2
    assert "missing.png" in capsys.readouterr().err
    assert cli.main(["--model", str(files / "nowhere"), "--prompt", "x"]) == 2
