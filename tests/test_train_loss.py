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


def test_task_vocabulary_loss_is_the_softmax_over_its_columns():
    """make_loss_sum with a task vocabulary against the model's full logits restricted to those columns (others
    -inf), log-softmax, mean over supervised tokens; a target outside the vocabulary is an error."""
    from flax import nnx

    import llavao1_jax as lj
    from llavao1_jax.model import preset
    from llavao1_jax.train import data, step, task_vocab

    cfg = preset("tiny", scan_layers=True)
    model = lj.init_model(cfg, seed=2)
    local = data.random_batch(cfg, 2, 32, seed=3)
    vocab = np.unique(np.concatenate([local["labels"][local["labels"] != IGNORE_INDEX], [0, 1, 2, 128009]]))
    lookup = task_vocab.target_lookup(vocab.astype(np.int32), cfg.text.vocab_size)
    targets = loss_targets(local["labels"], supervised_length(local["labels"], 8))
    remapped = task_vocab.remap_targets(targets["loss_targets"], targets["loss_weights"], lookup)
    batch = {k: jnp.asarray(v) for k, v in {**local, **targets, "loss_targets": remapped}.items() if k != "labels"}
    graphdef, params = nnx.split(model)
    total = step.make_loss_sum(graphdef, 8, vocab)(params, batch)

    inputs = {k: local[k] for k in ("input_ids", "attention_mask", "pixel_values", "aspect_ratio_ids",
                                    "aspect_ratio_mask", "cross_attention_mask")}
    logits = np.asarray(model(**inputs), np.float64)[:, :-1]
    restricted = np.full_like(logits, -np.inf)
    restricted[..., vocab] = logits[..., vocab]
    top = restricted.max(-1, keepdims=True)
    logp = restricted - top - np.log(np.exp(restricted - top).sum(-1, keepdims=True))
    target = local["labels"][:, 1:]
    mask = target != IGNORE_INDEX
    want = -np.take_along_axis(logp, np.where(mask, target, 0)[..., None], -1)[..., 0][mask].sum()
    np.testing.assert_allclose(float(total), want, rtol=2e-5)

    with pytest.raises(ValueError, match="batch row 0: target token id .* is not in the task vocabulary"):
        task_vocab.remap_targets(targets["loss_targets"], targets["loss_weights"],
                                 task_vocab.target_lookup(vocab[:3].astype(np.int32), cfg.text.vocab_size))
