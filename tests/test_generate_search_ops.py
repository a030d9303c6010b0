"""Engine operations the searches build on: prompts prefilled against images already encoded, per-token
log-probabilities of appended text, selected rows that keep sharing their image, and cache compaction."""
import numpy as np
import pytest

import llavao1_jax as lj
from hf_reference import IMAGE_TOKEN, make_batch, saved_hf_model
from llavao1_jax import inference

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def gen(tmp_path_factory):
    _, path = saved_hf_model(tmp_path_factory.mktemp("hf_tiny_search_ops"), seed=3)
    return inference.Generator(lj.load_pretrained(path, scan_layers=False))


def questions():
    """Two prompts with one image each (4 and 2 tiles), the second left-padded."""
    return make_batch(np.random.default_rng(21), [[6], [2]], 12, [[2], [4]], left_pad=[0, 3])


def judge_prompts(rng, rows: int, length: int):
    """Random prompts with text before and after one image token, of different real lengths (left padding)."""
    tokens = rng.integers(3, 89, (rows, length))
    lengths = rng.integers(length // 2, length + 1, rows)
    mask = np.arange(length)[None, :] >= (length - lengths)[:, None]
    image_at = length - lengths + 2
    tokens[np.arange(rows), image_at] = IMAGE_TOKEN
    return np.where(mask, tokens, 0), mask.astype(np.int64), image_at


def test_prompts_on_encoded_images_match_a_full_prefill(gen):
    """Judge-style prompts prefilled against the questions' image K/V give the logits and greedy tokens of a full
    prefill of the same prompts with the images (2 prompts per image; text before the image sees no image)."""
    q = questions()
    images = inference.fork(gen.prefill(q, max_new_tokens=8), 3)            # image rows shared by 3 copies
    tokens, mask, image_at = judge_prompts(np.random.default_rng(5), 4, 11)
    on_images = gen.prefill_on_images(images, tokens, mask, max_new_tokens=8)
    assert on_images.cache.cross_k[0].shape[0] == 2 and on_images.copies == 2
    cross = np.zeros((4, 11, 1, 4), np.int64)
    tiles = q["aspect_ratio_mask"][[0, 0, 1, 1]]
    for row in range(4):
        cross[row, image_at[row]:] = tiles[row]
    full = dict(input_ids=tokens, attention_mask=mask, cross_attention_mask=cross,
                **{k: np.repeat(q[k], 2, axis=0) for k in ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask")})
    reference = gen.prefill(full, max_new_tokens=8)
    np.testing.assert_allclose(np.asarray(on_images.logits), np.asarray(reference.logits), rtol=1e-5, atol=1e-5)
    options = dict(max_new_tokens=6, min_new_tokens=6)
    np.testing.assert_array_equal(gen.decode(on_images, **options)[0].tokens, gen.decode(reference, **options)[0].tokens)
    with pytest.raises(ValueError, match="image rows"):
        gen.prefill_on_images(images, tokens[:3], mask[:3], max_new_tokens=8)


def test_appended_token_logprobs_match_the_full_forward(gen):
    """append_tokens(return_logprobs=True) gives each real token's log-softmax under the full forward of the
    whole sequence; rows append different lengths with padding in between."""
    q = questions()
    state = gen.prefill(q, max_new_tokens=40)
    rng = np.random.default_rng(6)
    extra = rng.integers(3, 89, (2, 21))
    mask = np.ones((2, 21), bool)
    mask[0, 5:9] = False                                                    # a gap inside row 0
    mask[1, 15:] = False                                                    # row 1 is shorter
    _, logprobs = gen.append_tokens(state, extra, mask, return_logprobs=True)
    model = nnx_model(gen)
    for row in range(2):
        keep = q["attention_mask"][row].astype(bool)
        ids = np.concatenate([q["input_ids"][row][keep], extra[row][mask[row]]])[None]
        n = keep.sum()
        cross = np.concatenate([q["cross_attention_mask"][row][keep],
                                np.repeat(q["cross_attention_mask"][row][keep][-1:], mask[row].sum(), axis=0)])
        logits = np.asarray(model(ids, pixel_values=q["pixel_values"][row:row + 1],
                                  aspect_ratio_ids=q["aspect_ratio_ids"][row:row + 1],
                                  aspect_ratio_mask=q["aspect_ratio_mask"][row:row + 1],
                                  cross_attention_mask=cross[None]), np.float64)[0]
        log_softmax = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
            - logits.max(-1, keepdims=True)
        want = log_softmax[np.arange(n - 1, ids.shape[1] - 1), ids[0, n:]]
        np.testing.assert_allclose(logprobs[row][mask[row]], want, atol=2e-5)
        assert not logprobs[row][~mask[row]].any()


def nnx_model(gen):
    from flax import nnx

    return nnx.merge(gen.decoding_model.graphdef, gen.decoding_model.params)


def test_selected_rows_keep_sharing_their_image(gen):
    """select_rows(copies=c) keeps one image row per group of c and continues exactly like a plain selection; a
    group that spans two images is refused."""
    forked = inference.fork(gen.prefill(questions(), max_new_tokens=16), 3)  # rows 0-2: image 0, rows 3-5: image 1
    rows = np.array([2, 0, 4, 4])
    shared = inference.select_rows(forked, rows, copies=2)
    plain = inference.select_rows(forked, rows)
    assert shared.cache.cross_k[0].shape[0] == 2 and plain.cache.cross_k[0].shape[0] == 4
    options = dict(max_new_tokens=6, min_new_tokens=6)
    np.testing.assert_array_equal(gen.decode(shared, **options)[0].tokens, gen.decode(plain, **options)[0].tokens)
    with pytest.raises(ValueError, match="one image row"):
        inference.select_rows(forked, np.array([2, 3]), copies=2)


def test_compaction_frees_the_slots_of_rejected_candidates(gen):
    """After candidates of different lengths and a selection, compaction moves each row's valid slots to the
    front: the cache's write index drops to the longest row, and decoding continues with the same tokens."""
    forked = inference.fork(gen.prefill(questions(), max_new_tokens=40), 2)
    first, state = gen.decode(forked, max_new_tokens=[9, 2, 3, 12], min_new_tokens=0, stop_token_ids=())
    winners = inference.select_rows(state, np.array([1, 2]))              # the short candidate of each question
    before = int(winners.index)
    compacted = inference.compact(inference.select_rows(state, np.array([1, 2])))
    assert int(compacted.index) == int(np.asarray(winners.key_valid).sum(axis=1).max()) < before
    np.testing.assert_array_equal(np.asarray(compacted.positions), np.asarray(winners.positions))
    options = dict(max_new_tokens=8, min_new_tokens=8)
    np.testing.assert_array_equal(gen.decode(compacted, **options)[0].tokens, gen.decode(winners, **options)[0].tokens)
    assert first.lengths.tolist() == [9, 2, 3, 12]
