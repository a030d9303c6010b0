"""Blocked reductions over the vocabulary axis against float64 numpy."""
import numpy as np
import pytest

from llavao1_jax import vocab_reductions as vocab


def _logsumexp64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    top = x.max(axis=-1, keepdims=True)
    return (top + np.log(np.exp(x - top).sum(axis=-1, keepdims=True)))[..., 0]


@pytest.mark.parametrize("shape", [(2, 128256), (3, 2, 1000), (4, 1009)])  # real vocabulary, leading dims, prime V
def test_logsumexp_matches_float64(shape):
    x = np.random.default_rng(0).normal(scale=4.0, size=shape).astype(np.float32)
    np.testing.assert_allclose(np.asarray(vocab.logsumexp(x)), _logsumexp64(x), rtol=1e-6, atol=1e-5)
    top = x.max(axis=-1)
    np.testing.assert_allclose(np.asarray(vocab.logsumexp(x, top)), _logsumexp64(x), rtol=1e-6, atol=1e-5)


def test_blocks_are_a_reshape_near_sqrt_v_and_row_total_sums_them():
    x = np.arange(2 * 3 * 128256, dtype=np.float32).reshape(2, 3, 128256)
    b = np.asarray(vocab.blocks(x))
    assert b.shape == (2, 3, 384, 334)
    np.testing.assert_array_equal(b.reshape(x.shape), x)
    sums = np.random.default_rng(1).uniform(size=(5, 384)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(vocab.row_total(sums)), sums.astype(np.float64).sum(axis=-1), rtol=1e-6)


def test_logsumexp_of_one_dominant_entry_is_that_entry():
    x = np.full((2, 1000), -1e4, np.float32)
    x[0, 17], x[1, 999] = 3.0, -2.0
    np.testing.assert_allclose(np.asarray(vocab.logsumexp(x)), [3.0, -2.0], rtol=0, atol=1e-6)
