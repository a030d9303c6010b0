"""The tiny model memorises 16 synthetic reasoning samples: the loss on them goes to near zero.

The samples come through the real SFT pipeline (chat template, assistant-only labels, 4-tile images); their token ids
are renumbered onto the few hundred ids they use, so the tiny model's vocabulary is that small and a step is quick.
Slow: a minute of compilation and 300 steps (over 20 minutes on the loaded 2-core machine)."""
import dataclasses

import jax
import numpy as np
import pytest

from configs.sft_tiny import get_config
from llavao1_jax.data import build, pipeline
from llavao1_jax.model import preset
from llavao1_jax.train import data
from llavao1_jax.train import mesh as train_mesh
from llavao1_jax.train.program import build_program
from llavao1_jax.train.state import init_train_state

SAMPLES, CHUNK = 16, 64


@pytest.mark.slow
def test_tiny_model_overfits_16_samples(tmp_path):
    build.build_synthetic_reasoning(tmp_path, num_train=SAMPLES, num_test=2, seed=0, image_size=56)
    config = get_config()
    config.data.data_dir = str(tmp_path)
    config.batch_size, config.loss.chunk_size = SAMPLES, CHUNK
    config.mesh.fsdp = 2  # of the 8 fake devices: fewer collective threads to starve on a loaded machine
    config.optim.update(dict(learning_rate=1e-2, schedule="warmup_cosine", warmup_steps=10, clip_norm=1.0))
    base = preset("tiny")
    processor = data.make_processor(config, base)
    batch = next(data.sft_iterator(config, processor, tmp_path, "train", train=True))

    ids = np.unique(np.concatenate([batch["input_ids"].ravel(), [base.image_token_index]]))
    renumber = lambda x: np.where(x == pipeline.IGNORE_INDEX, x, np.searchsorted(ids, x)).astype(np.int32)
    batch["input_ids"], batch["labels"] = renumber(batch["input_ids"]), renumber(batch["labels"])
    vocab = len(ids) - 1  # the image token becomes the last id, one past the text vocabulary
    cfg = base.replace(text=dataclasses.replace(base.text, vocab_size=vocab), image_token_index=vocab)
    assert int(np.searchsorted(ids, base.image_token_index)) == vocab

    steps = 300
    mesh, rules = train_mesh.mesh_from_config(config, jax.devices()[:2]), train_mesh.rules_from_config(config)
    program = build_program(config, cfg, mesh, rules, steps_per_epoch=1, total_steps=steps)
    state = init_train_state(config, cfg, program.tx, program.shardings, mesh, rules)
    with jax.set_mesh(mesh):
        device_batch = data.device_batch(batch, program.batch_shardings, CHUNK)
        losses = []
        for _ in range(steps):
            state, m = program.train_step(state, device_batch)
            losses.append(float(m["loss"]))
    assert losses[0] > 4.0
    assert losses[-1] < 0.05, losses[::25]
