"""The supervised-only chunked loss against a naive full-logits cross-entropy (values and gradients), and the host
side that lists the supervised positions."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llavao1_jax.data.pipeline import IGNORE_INDEX
from llavao1_jax.train.loss import loss_targets, supervised_cross_entropy, supervised_length

B, S, D, V = 3, 24, 16, 97


def _naive_mean_loss(hidden, kernel, labels):
    """Full [B, S, V] logits, log-softmax, the shifted labels, mean over trained tokens."""
    logits = (hidden @ kernel)[:, :-1]
    logp = jax.nn.log_softmax(logits, axis=-1)
    target = labels[:, 1:]
    mask = target != IGNORE_INDEX
    picked = jnp.take_along_axis(logp, jnp.where(mask, target, 0)[..., None], axis=-1)[..., 0]
    return -jnp.sum(picked * mask) / mask.sum()


@pytest.fixture
def problem():
    rng = np.random.default_rng(0)
    hidden = jnp.asarray(rng.standard_normal((B, S, D)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((D, V)) * 0.5, jnp.float32)
    labels = rng.integers(0, V, (B, S)).astype(np.int32)
    labels[rng.random((B, S)) < 0.4] = IGNORE_INDEX  # scattered, different per row
    labels[1, :] = IGNORE_INDEX
    labels[1, -3:] = 5                               # a row with only a short answer at the end
    return hidden, kernel, labels


@pytest.mark.parametrize("chunk_size", [4, 7, 64])
def test_chunked_loss_and_gradients_equal_naive(problem, chunk_size):
    hidden, kernel, labels = problem
    t = {k: jnp.asarray(v) for k, v in loss_targets(labels, supervised_length(labels, chunk_size)).items()}

    def chunked(hidden, kernel):
        total = supervised_cross_entropy(hidden, kernel, t["loss_positions"], t["loss_targets"],
                                         t["loss_weights"], chunk_size)
        return total / t["loss_weights"].sum()

    got, got_grads = jax.value_and_grad(chunked, argnums=(0, 1))(hidden, kernel)
    want, want_grads = jax.value_and_grad(_naive_mean_loss, argnums=(0, 1))(hidden, kernel, jnp.asarray(labels))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    for g, w in zip(got_grads, want_grads):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7)


def test_loss_never_forms_full_logits(problem):
    """The loss and its gradients hold logits for one chunk of positions at a time, never for every position."""
    hidden, kernel, labels = problem
    t = loss_targets(labels, supervised_length(labels, 4))
    fn = lambda h, k: supervised_cross_entropy(h, k, t["loss_positions"], t["loss_targets"], t["loss_weights"], 4)
    hlo = jax.jit(jax.grad(fn, argnums=(0, 1))).lower(hidden, kernel).as_text()
    shapes = {tuple(map(int, m.split("x"))) for m in re.findall(r"tensor<((?:\d+x)+)f32>", hlo)
              for m in [m.rstrip("x")]}
    vocab_arrays = {s for s in shapes if len(s) >= 3 and s[-1] == V}  # logits-like, not the kernel
    assert (B, 4, V) in vocab_arrays
    assert max(np.prod(s) for s in vocab_arrays) == B * 4 * V


def test_loss_targets_shift_and_padding():
    labels = np.array([[IGNORE_INDEX, 5, 6, IGNORE_INDEX, 7],
                       [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 9]], np.int32)
    t = loss_targets(labels, 4)
    np.testing.assert_array_equal(t["loss_positions"], [[0, 1, 3, 0], [3, 0, 0, 0]])  # position t predicts t + 1
    np.testing.assert_array_equal(t["loss_targets"], [[5, 6, 7, 0], [9, 0, 0, 0]])
    np.testing.assert_array_equal(t["loss_weights"], [[1, 1, 1, 0], [1, 0, 0, 0]])
    with pytest.raises(ValueError, match="3 supervised positions, more than the loss length 2"):
        loss_targets(labels, 2)


def test_supervised_length_buckets():
    labels = np.full((2, 512), IGNORE_INDEX, np.int32)
    lengths = []
    for count in (0, 64, 65, 129, 300, 511):
        labels[0, 1:1 + count] = 1
        lengths.append(supervised_length(labels, 64))
    assert lengths == [64, 64, 128, 256, 512, 512]
