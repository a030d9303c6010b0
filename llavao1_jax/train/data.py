"""The trainer's input side: the dataset of `config.data` (the synthetic set built into the workdir when absent),
this process's SFT iterator, and global device batches assembled from every process's rows."""
from __future__ import annotations

import json
from pathlib import Path

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

from llavao1_jax.data import build, pipeline, synthetic_reasoning as sr
from llavao1_jax.model.config import MllamaConfig
from llavao1_jax.processor import Processor
from llavao1_jax.sharding import array_sharding
from llavao1_jax.train import task_vocab
from llavao1_jax.train.loss import loss_targets, supervised_length

# Logical axes of every array of a device batch (what the train step reads); only "batch" is sharded by default.
BATCH_AXES = {
    "input_ids": ("batch", "length"),
    "attention_mask": ("batch", "length"),
    "pixel_values": ("batch", None, None, None, None, None),
    "aspect_ratio_ids": ("batch", None),
    "aspect_ratio_mask": ("batch", None, None),
    "cross_attention_mask": ("batch", "length", None, None),
    "loss_positions": ("batch", None),
    "loss_targets": ("batch", None),
    "loss_weights": ("batch", None),
}


def make_processor(config: ml_collections.ConfigDict, cfg: MllamaConfig) -> Processor:
    """The processor of `config.model.init_from`, else the Llama-3.2-Vision one with the model's tile size."""
    if config.model.init_from:
        return Processor.from_pretrained(config.model.init_from)
    return Processor.llama3_2_vision(tile_size=cfg.vision.image_size, max_image_tiles=cfg.vision.max_num_tiles)


def dataset_dir(config: ml_collections.ConfigDict, workdir: str | Path) -> Path:
    """`config.data.data_dir`, or `workdir/data` with the synthetic set built there by process 0 when absent."""
    d = config.data
    if d.data_dir:
        return Path(d.data_dir)
    if d.name != "synthetic_reasoning":
        raise ValueError(f"config.data.data_dir is required for config.data.name={d.name!r} (only the synthetic "
                         "set is built on the fly)")
    path = Path(workdir) / "data"
    if jax.process_index() == 0:
        build.build_synthetic_reasoning(path, num_train=d.num_train, num_test=d.num_test, seed=d.seed,
                                        image_size=d.image_size, judge_fraction=d.judge_fraction,
                                        caption_style=d.get("caption_style", "objects"),
                                        background=d.get("background", "light"),
                                        question_types=tuple(d.question_types))
    multihost_utils.sync_global_devices("synthetic data built")
    return path


def sft_iterator(config: ml_collections.ConfigDict, processor: Processor, data_dir: Path, split: str, *,
                 train: bool) -> pipeline.SFTIterator:
    """This process's batches of `split`: shuffled and repeated for training, one ordered pass for evaluation."""
    d = config.data
    source = pipeline.host_source(d.name, split, data_dir)
    return pipeline.SFTIterator(pipeline.sft_dataset(
        source, processor, batch_size=config.batch_size // jax.process_count(), buckets=tuple(d.buckets),
        answer_format=d.answer_format, seed=config.seed, shuffle=train, num_epochs=None if train else 1,
        num_workers=d.num_workers if train else 0))


def batch_shardings(mesh: Mesh, rules, batch_size: int) -> dict[str, NamedSharding]:
    """NamedShardings of a device batch of `batch_size` rows (see BATCH_AXES)."""
    return {k: array_sharding(axes, (batch_size,) + (1,) * (len(axes) - 1), mesh, rules)
            for k, axes in BATCH_AXES.items()}


def device_batch(local: dict, shardings: dict[str, NamedSharding], chunk_size: int,
                 vocab_lookup: np.ndarray | None = None) -> dict[str, jax.Array]:
    """The global batch from this process's rows (`jax.make_array_from_process_local_data`), with the loss
    targets of `loss.loss_targets` in place of `labels` (as task-vocabulary positions with `vocab_lookup`, see
    `task_vocab.target_lookup`); every process agrees on the loss length."""
    length = supervised_length(local["labels"], chunk_size)
    if jax.process_count() > 1:
        length = int(np.max(multihost_utils.process_allgather(np.int32(length))))
    arrays = {k: v for k, v in local.items() if k != "labels"}
    arrays.update(loss_targets(local["labels"], length))
    if vocab_lookup is not None:
        arrays["loss_targets"] = task_vocab.remap_targets(arrays["loss_targets"], arrays["loss_weights"], vocab_lookup)
    rows = jax.process_count()
    return {k: jax.make_array_from_process_local_data(shardings[k], v, (v.shape[0] * rows, *v.shape[1:]))
            for k, v in arrays.items()}


def gather_process_states(state: dict) -> dict[str, dict]:
    """Every process's data-iterator state (JSON-able dicts), keyed 'process_<i>', on every process."""
    if jax.process_count() == 1:
        return {"process_0": state}
    raw = np.frombuffer(json.dumps(state).encode(), np.uint8)
    longest = int(np.max(multihost_utils.process_allgather(np.int32(len(raw)))))
    padded = np.zeros(longest, np.uint8)
    padded[:len(raw)] = raw
    rows = multihost_utils.process_allgather(padded)
    return {f"process_{i}": json.loads(bytes(row).rstrip(b"\0")) for i, row in enumerate(rows)}


def random_batch(cfg: MllamaConfig, batch_size: int, seq_len: int, *, supervised_fraction: float = 0.5,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """A batch in the pipeline's layout with random tokens and pixels, one image of `cfg.vision.max_num_tiles` tiles
    per row and the last `supervised_fraction` of every row trained (benchmarks, tests, the capacity planner)."""
    rng = np.random.default_rng(seed)
    v = cfg.vision
    tiles = v.max_num_tiles
    grid = next(i for i, (h, w) in enumerate(v.supported_aspect_ratios) if h * w == tiles) + 1
    input_ids = rng.integers(0, cfg.text.vocab_size, (batch_size, seq_len), dtype=np.int32)
    input_ids[:, 0] = cfg.image_token_index
    labels = input_ids.copy()
    labels[:, :seq_len - int(seq_len * supervised_fraction)] = pipeline.IGNORE_INDEX
    return {
        "input_ids": input_ids,
        "attention_mask": np.ones((batch_size, seq_len), np.int32),
        "labels": labels,
        "pixel_values": rng.standard_normal((batch_size, 1, tiles, v.num_channels, v.image_size, v.image_size),
                                            dtype=np.float32),
        "aspect_ratio_ids": np.full((batch_size, 1), grid, np.int32),
        "aspect_ratio_mask": np.ones((batch_size, 1, tiles), np.int32),
        "cross_attention_mask": np.ones((batch_size, seq_len, 1, tiles), np.int32),
    }
