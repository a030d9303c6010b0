"""The tiny model memorises 16 synthetic reasoning samples: the loss on them goes to near zero.

The samples come through the real SFT pipeline (chat template, assistant-only labels, 4-tile images) and the real
train step (`build_program`) on one device. What makes it quick: the token ids are renumbered onto the 135 ids the
samples use (the head over the full 128256-token vocabulary would dominate the step), the vision tower is cut to 7-px
patches and 3 + 1 layers (its attention over 4 x 56 tokens per image dominates the rest), and the rows are padded to
208 tokens (the longest sample has 194). Slow: about a minute of compilation and 100 steps on the loaded machine."""
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

SAMPLES, CHUNK, STEPS = 16, 64, 100


@pytest.mark.slow
def test_tiny_model_overfits_16_samples(tmp_path):
    build.build_synthetic_reasoning(tmp_path, num_train=SAMPLES, num_test=2, seed=0, image_size=56)
    config = get_config()
    config.data.data_dir, config.data.buckets = str(tmp_path), (208,)
    config.batch_size, config.loss.chunk_size = SAMPLES, CHUNK
    config.mesh.fsdp = 1
    config.optim.update(dict(learning_rate=1e-2, schedule="constant", clip_norm=1.0))
    base = preset("tiny")
    base = base.replace(vision=dataclasses.replace(base.vision, patch_size=7, num_hidden_layers=3,
                                                   num_global_layers=1, intermediate_layers_indices=(0, 2)))
    processor = data.make_processor(config, base)
    batch = next(data.sft_iterator(config, processor, tmp_path, "train", train=True))
    assert batch["attention_mask"].sum(axis=1).max() < 208  # nothing truncated

    ids = np.unique(np.concatenate([batch["input_ids"].ravel(), [base.image_token_index]]))
    renumber = lambda x: np.where(x == pipeline.IGNORE_INDEX, x, np.searchsorted(ids, x)).astype(np.int32)
    batch["input_ids"], batch["labels"] = renumber(batch["input_ids"]), renumber(batch["labels"])
    vocab = len(ids) - 1  # the image token becomes the last id, one past the text vocabulary
    cfg = base.replace(text=dataclasses.replace(base.text, vocab_size=vocab), image_token_index=vocab)
    assert int(np.searchsorted(ids, base.image_token_index)) == vocab

    mesh, rules = train_mesh.mesh_from_config(config, jax.devices()[:1]), train_mesh.rules_from_config(config)
    program = build_program(config, cfg, mesh, rules, steps_per_epoch=1, total_steps=STEPS)
    state = init_train_state(config, cfg, program.tx, program.shardings, mesh, rules)
    with jax.set_mesh(mesh):
        device_batch = data.device_batch(batch, program.batch_shardings, CHUNK)
        losses = []
        for _ in range(STEPS):
            state, m = program.train_step(state, device_batch)
            losses.append(float(m["loss"]))
    # From about ln(135) = 4.9 (a random model) to a mean cross-entropy of 0.05: the correct next token gets about
    # 95% probability at every supervised position, i.e. the answers are memorised.
    assert losses[0] > 4.0
    assert losses[-1] < 0.05, losses[::10]
