"""Decoding restricted to a token subset (`allowed_token_ids`): greedy against transformers with every other id
suppressed, sampling that stays inside the subset, log-probabilities of the restricted distribution, bad ids."""
import numpy as np
import pytest

import llavao1_jax as lj
from hf_reference import make_batch
from test_generate import checkpoint, hf_generate, ours  # noqa: F401 (checkpoint and ours are fixtures)

NEW = 12


def allowed(vocab_size: int) -> np.ndarray:
    return np.random.default_rng(5).choice(vocab_size, vocab_size // 3, replace=False)


def image_batch():
    return make_batch(np.random.default_rng(21), [[6, 0], [5, 7]], 13, [[4, -1], [2, 6]], left_pad=[4, 0])


def test_greedy_matches_transformers_with_other_ids_suppressed(checkpoint, ours):
    batch = image_batch()
    ids = allowed(ours.config.text.vocab_size)
    out = lj.generate(ours, batch, max_new_tokens=NEW, min_new_tokens=NEW, allowed_token_ids=ids)
    others = np.setdiff1d(np.arange(ours.config.text.vocab_size), ids)
    expected = hf_generate(checkpoint[0], batch, max_new_tokens=NEW, min_new_tokens=NEW,
                           suppress_tokens=others.tolist())
    np.testing.assert_array_equal(out.tokens[:, :NEW], expected)
    assert np.isin(out.tokens[:, :NEW], ids).all()


def test_sampling_and_logprobs_stay_in_the_subset(ours):
    batch = image_batch()
    ids = allowed(ours.config.text.vocab_size)
    generator = lj.Generator(ours, allowed_token_ids=ids)
    out = generator.generate(batch, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=True, temperature=1.5, seed=4)
    assert np.isin(out.tokens[:, :NEW], ids).all()
    # the first token's log-probability is the log-softmax over the allowed ids of the prompt's last logits
    logits = np.asarray(ours(**batch))[:, -1, ids].astype(np.float64)
    log_softmax = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) \
        - logits.max(1, keepdims=True)
    first = out.tokens[:, 0]
    expected = log_softmax[np.arange(2), [list(ids).index(t) for t in first]]
    np.testing.assert_allclose(out.logprobs[:, 0], expected, atol=2e-5)
    unrestricted = lj.Generator(ours).generate(batch, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=True,
                                               temperature=1.5, seed=4)
    assert not np.isin(unrestricted.tokens[:, :NEW], ids).all()  # the restriction is what keeps them inside


@pytest.mark.parametrize("bad, message", [([], "non-empty"), ([5, 10 ** 9], "outside the vocabulary"),
                                          ([-1, 3], "outside the vocabulary"), ([1.5], "token ids")])
def test_bad_allowed_ids(ours, bad, message):
    with pytest.raises(ValueError, match=message):
        lj.Generator(ours, allowed_token_ids=bad)
