"""The main job on its embedded default: a tiny Mllama, synthetic reasoning problems, on CPU, in about a minute.

    python -m llavao1_jax.demo [--config=configs/demo.py[:problems=8]] [--config.max_new_tokens=64]

It draws synthetic problems, runs them through the real Llama-3.2-Vision processor (tiles sized for the tiny
model), builds a random model, runs a jitted forward pass and a batched generation, and round-trips the weights
through the Hugging Face format. The model is untrained here, so its answers are noise; the training run replaces
this demo once the trainer exists.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from absl import app
from flax import nnx
from ml_collections import config_flags

import llavao1_jax as lj
from llavao1_jax.cli.quiet import quiet_library_logs
from llavao1_jax.config_utils import write_config
from llavao1_jax.data.synthetic_reasoning import draw_scene, make_problem
from llavao1_jax.model import preset

_DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.py"


class Timer:
    """Prints how long each step took."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        if exc[0] is None:
            print(f"  {self.name:<44}{self.seconds:7.2f} s")


def run(config) -> dict:
    """Runs the demo and returns its figures."""
    print(f"llavao1_jax demo on {jax.device_count()} {jax.devices()[0].platform} device(s); workdir {config.workdir}")
    write_config(config, config.workdir)
    # The per-layer text layout: what generation reads (a scanned model would be copied into it first).
    model_config = preset(config.model.preset, dtype=config.model.dtype, param_dtype=config.model.dtype,
                          scan_layers=False)
    with Timer("build the processor (real tokenizer)"):
        processor = lj.Processor.llama3_2_vision(tile_size=model_config.vision.image_size,
                                                 max_image_tiles=model_config.vision.max_num_tiles)
    with Timer(f"draw {config.data.problems} synthetic problems"):
        problems = [make_problem(config.data.seed, "test", i) for i in range(config.data.problems)]
        images = [[draw_scene(p.objects, config.data.image_size)] for p in problems]
        prompts = [processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": p.question}]}],
            add_generation_prompt=True) for p in problems]
    with Timer("preprocess + tokenise"):
        batch = processor(images=images, text=prompts, padding=True, padding_side="left")
    with Timer(f"init the '{config.model.preset}' model (jit)"):
        model = lj.init_model(model_config, seed=config.model.seed)
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    with Timer("forward: compile + run") as compile_forward:
        logits = np.asarray(model(**batch))
    with Timer("forward: run again (compiled)") as forward:
        np.asarray(model(**batch))
    generator = lj.Generator(model)
    with Timer(f"generate {config.max_new_tokens} tokens (greedy, compile + run)"):
        generator.generate(batch, max_new_tokens=config.max_new_tokens, min_new_tokens=config.max_new_tokens,
                           stop_token_ids=())
    with Timer(f"generate {config.max_new_tokens} tokens (compiled)") as gen_time:
        result = generator.generate(batch, max_new_tokens=config.max_new_tokens, processor=processor,
                                    min_new_tokens=config.max_new_tokens, stop_token_ids=())
    with Timer("save to Hugging Face format and load back"), tempfile.TemporaryDirectory() as tmp:
        lj.save_pretrained(model, tmp)
        reloaded = lj.load_pretrained(tmp, scan_layers=False)
        same = np.array_equal(np.asarray(reloaded(**batch)), logits)

    tokens = int(result.lengths.sum())
    print(f"\nmodel: {n_params / 1e6:.1f}M parameters; batch: input_ids {batch['input_ids'].shape}, "
          f"pixel_values {batch['pixel_values'].shape}")
    print(f"logits {logits.shape}, finite: {bool(np.isfinite(logits).all())}; round trip identical: {same}")
    print(f"forward {forward.seconds * 1e3:.0f} ms (first call with compile {compile_forward.seconds:.1f} s); "
          f"decode {tokens / gen_time.seconds:.0f} tokens/s over the batch")
    print(f"question: {problems[0].question!r}\nexpected: {problems[0].answer!r}\n"
          f"untrained model says: {result.texts[0][:120]!r}")
    return dict(params=n_params, logits_shape=logits.shape, round_trip=same, tokens_per_s=tokens / gen_time.seconds)


def cli() -> None:
    """The command line: defines its flags here, so that importing this module defines none."""
    config = config_flags.DEFINE_config_file("config", str(_DEFAULT_CONFIG), "ml_collections config file",
                                             lock_config=True)

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments {argv[1:]}")
        quiet_library_logs()
        run(config.value)

    app.run(main)


if __name__ == "__main__":
    cli()
