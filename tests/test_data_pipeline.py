"""The SFT input pipeline: batch layout, assistant-only labels, truncation, exact resume, host slices, worker processes."""
import json

import numpy as np
import pytest
from absl import flags

from llavao1_jax.data import build, formats, pipeline, records
from llavao1_jax.processor import Processor

BATCH = 4
NUM_TRAIN, NUM_TEST = 24, 7
BUCKETS = (64, 256, 512)


@pytest.fixture(scope="module")
def processor():
    return Processor.llama3_2_vision(tile_size=28, max_image_tiles=4)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tfds")
    build.build_synthetic_reasoning(path, num_train=NUM_TRAIN, num_test=NUM_TEST, seed=0, image_size=56)
    return path


@pytest.fixture(scope="module")
def source(data_dir):
    return pipeline.host_source("synthetic_reasoning", "train", data_dir, process_index=0, process_count=1)


def _iterator(source, processor, **kwargs):
    options = dict(batch_size=BATCH, buckets=BUCKETS, seed=1)
    options.update(kwargs)
    return pipeline.SFTIterator(pipeline.sft_dataset(source, processor, **options))


def _assert_same_batches(got, expected):
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_batch_layout(source, processor):
    batch = next(_iterator(source, processor, shuffle=False))
    length = batch["input_ids"].shape[1]
    tile = processor.image_processor.tile_size
    shapes = {
        "input_ids": ((BATCH, length), np.int32), "attention_mask": ((BATCH, length), np.int32),
        "labels": ((BATCH, length), np.int32), "pixel_values": ((BATCH, 1, 4, 3, tile, tile), np.float32),
        "aspect_ratio_ids": ((BATCH, 1), np.int32), "aspect_ratio_mask": ((BATCH, 1, 4), np.int32),
        "cross_attention_mask": ((BATCH, length, 1, 4), np.int32),
    }
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == shapes
    lengths = batch["attention_mask"].sum(axis=1)
    assert length == next(b for b in BUCKETS if b >= lengths.max()) == 256  # the smallest bucket that fits
    for row in range(BATCH):
        record = records.to_sample(source[row])  # unshuffled: row i of batch 0 is record i
        n = lengths[row]
        assert (batch["attention_mask"][row, :n] == 1).all() and (batch["attention_mask"][row, n:] == 0).all()
        assert (batch["input_ids"][row, n:] == processor.pad_token_id).all()
        expected_ids, _ = pipeline.encode_conversation(processor, pipeline.to_messages(record.turns))
        np.testing.assert_array_equal(batch["input_ids"][row, :n], expected_ids)
        image = processor.image_processor.preprocess(record.image)  # 56 px image, 28 px tiles: a 2 x 2 grid
        assert image.grid == (2, 2) and batch["aspect_ratio_ids"][row, 0] == 6
        np.testing.assert_array_equal(batch["pixel_values"][row, 0], image.tiles)
        np.testing.assert_array_equal(batch["aspect_ratio_mask"][row, 0], [1, 1, 1, 1])
        (image_pos,) = np.flatnonzero(batch["input_ids"][row] == processor.image_token_id)
        cross = batch["cross_attention_mask"][row, :, 0, :]
        assert (cross[:image_pos] == 0).all() and (cross[image_pos:] == 1).all()


@pytest.mark.parametrize("answer_format", formats.FORMATS)
def test_labels_are_exactly_the_assistant_turns(source, processor, answer_format):
    batch = next(_iterator(source, processor, shuffle=False, answer_format=answer_format))
    for row in range(BATCH):
        ids, labels = batch["input_ids"][row], batch["labels"][row]
        trained = labels != pipeline.IGNORE_INDEX
        np.testing.assert_array_equal(labels[trained], ids[trained])  # aligned with input_ids, not shifted
        answer = records.to_sample(source[row]).turns[1][1]
        assert processor.decode(ids[trained]) == formats.convert_answer(answer, answer_format) + "<|eot_id|>"
        # Everything before the answer is masked: BOS, headers, the image token and the question.
        first = np.flatnonzero(trained)[0]
        assert processor.decode(ids[:first]).endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
        assert trained[first:].sum() == trained.sum() and not trained[batch["attention_mask"][row] == 0].any()


def test_multi_turn_labels(processor):
    answers = ["<SUMMARY> a </SUMMARY> <CAPTION> b </CAPTION> <REASONING> c </REASONING> <CONCLUSION> 1 </CONCLUSION>",
               "<SUMMARY> d </SUMMARY> <CAPTION> e </CAPTION> <REASONING> f </REASONING> <CONCLUSION> 2 </CONCLUSION>"]
    turns = [("human", "First?"), ("gpt", answers[0]), ("human", "\nSecond, with spaces  "), ("gpt", answers[1])]
    messages = pipeline.to_messages(turns)
    assert messages[0]["content"][0] == {"type": "image"} and len(messages[2]["content"]) == 1
    ids, labels = pipeline.encode_conversation(processor, messages)
    trained = labels != pipeline.IGNORE_INDEX
    assert processor.decode(ids[trained]) == "<|eot_id|>".join(answers) + "<|eot_id|>"
    assert np.count_nonzero(np.diff(trained.astype(int)) == 1) == 2  # two separate trained spans
    masked = processor.decode(ids[~trained])
    assert "First?" in masked and "\nSecond, with spaces  " in masked and "<|image|>" in masked
    assert not any(a in masked for a in answers)


def test_truncation_is_counted(source, processor):
    iterator = _iterator(source, processor, buckets=(64,))
    batches = [next(iterator) for _ in range(2)]
    assert all(b["input_ids"].shape == (BATCH, 64) and b["attention_mask"].all() for b in batches)
    assert iterator.num_samples == iterator.num_truncated == 2 * BATCH
    assert iterator.get_state()["num_truncated"] == 2 * BATCH
    full = next(_iterator(source, processor, buckets=BUCKETS))
    np.testing.assert_array_equal(batches[0]["input_ids"], full["input_ids"][:, :64])  # the first tokens are kept


def test_resume_gives_the_same_batches(source, processor):
    steps_per_epoch = NUM_TRAIN // BATCH
    reference = _iterator(source, processor)
    expected = [next(reference) for _ in range(steps_per_epoch + 4)]
    interrupted = _iterator(source, processor)
    k = steps_per_epoch + 1  # the next batches cross no boundary, the earlier ones crossed an epoch
    for _ in range(k):
        next(interrupted)
    state = json.loads(json.dumps(interrupted.get_state()))  # what a checkpoint stores
    resumed = _iterator(source, processor)
    resumed.set_state(state)
    _assert_same_batches([next(resumed) for _ in range(len(expected) - k)], expected[k:])
    assert resumed.num_samples == len(expected) * BATCH


def test_epochs_are_reshuffled_permutations(source, processor):
    def epochs(seed, n=2):
        iterator = _iterator(source, processor, batch_size=1, buckets=(512,), seed=seed, num_epochs=n)
        keys = [next(iterator)["input_ids"].tobytes() for _ in range(n * NUM_TRAIN)]
        with pytest.raises(StopIteration):
            next(iterator)
        return [keys[i * NUM_TRAIN:(i + 1) * NUM_TRAIN] for i in range(n)]

    first, second = epochs(seed=1)
    assert sorted(first) == sorted(second) and len(set(first)) == NUM_TRAIN  # each epoch: every record once
    assert first != second
    assert epochs(seed=1) == [first, second]
    assert epochs(seed=2)[0] != first


@pytest.mark.parametrize("hosts", [2, 3])
def test_host_slices_are_disjoint_and_complete(data_dir, hosts):
    ids = []
    for index in range(hosts):
        source = pipeline.host_source("synthetic_reasoning", "test", data_dir, process_index=index, process_count=hosts)
        ids.append([source[i]["id"].decode() for i in range(len(source))])
    sizes = [len(s) for s in ids]
    assert max(sizes) - min(sizes) <= 1
    flat = [i for s in ids for i in s]
    assert len(flat) == len(set(flat)) == NUM_TEST
    assert sorted(flat) == [f"test-{i:07d}" for i in range(NUM_TEST)]
    whole = pipeline.host_source("synthetic_reasoning", "test", data_dir)  # jax.process_index() 0 of 1
    assert len(whole) == NUM_TEST


def test_bad_arguments(source, processor, data_dir):
    with pytest.raises(ValueError, match="buckets"):
        pipeline.sft_dataset(source, processor, batch_size=2, buckets=(512, 256))
    with pytest.raises(ValueError, match="answer format"):
        pipeline.sft_dataset(source, processor, batch_size=2, answer_format="json")
    with pytest.raises(ValueError, match="fewer than one batch"):
        pipeline.sft_dataset(source, processor, batch_size=NUM_TRAIN + 1)
    with pytest.raises(ValueError, match="process_index"):
        pipeline.host_source("synthetic_reasoning", "test", data_dir, process_index=2, process_count=2)


def test_worker_processes_give_the_same_batches(source, processor):
    expected_iterator = _iterator(source, processor)
    expected = [next(expected_iterator) for _ in range(3)]
    iterator = _iterator(source, processor, num_workers=1)
    try:
        _assert_same_batches([next(iterator) for _ in range(3)], expected)
    finally:
        iterator.close()


def test_resume_with_worker_processes(source, processor):
    expected_iterator = _iterator(source, processor)
    expected = [next(expected_iterator) for _ in range(5)]
    iterator = _iterator(source, processor, num_workers=2)
    got = [next(iterator) for _ in range(2)]
    state = json.loads(json.dumps(iterator.get_state()))
    got += [next(iterator) for _ in range(3)]
    iterator.close()
    _assert_same_batches(got, expected)
    resumed = _iterator(source, processor, num_workers=2)
    resumed.set_state(state)
    try:
        _assert_same_batches([next(resumed) for _ in range(3)], expected[2:])
    finally:
        resumed.close()


def test_worker_processes_need_parsed_absl_flags(source, processor):
    """The pipeline leaves the program's absl flags alone and says how to parse them."""
    flags.FLAGS.unparse_flags()
    try:
        with pytest.raises(ValueError, match="absl.app.run"):
            _iterator(source, processor, num_workers=1)
    finally:
        flags.FLAGS.mark_as_parsed()
