"""Sampling: filtered distributions (chi-square against numpy), exact top-p cut, keys, banning, log-probabilities."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llavao1_jax.inference.sampling import SamplingConfig, _top_p_cut, next_tokens

V = 40
DRAWS = 20000


def reference_distribution(logits: np.ndarray, cfg: SamplingConfig) -> np.ndarray:
    """transformers' warpers in numpy: temperature, top-k, then top-p over the sorted distribution."""
    x = logits.astype(np.float64) / cfg.temperature
    if cfg.top_k:
        x = np.where(x >= np.sort(x)[-cfg.top_k], x, -np.inf)
    if cfg.top_p < 1:
        p = np.exp(x - x.max())
        p /= p.sum()
        order = np.argsort(-p)
        above = np.cumsum(p[order]) - p[order]
        keep = np.zeros_like(p, bool)
        keep[order[above < cfg.top_p]] = True
        x = np.where(keep, x, -np.inf)
    p = np.exp(x - x.max())
    return p / p.sum()


def draw(logits: np.ndarray, cfg: SamplingConfig, seed: int = 0) -> np.ndarray:
    keys = jax.random.split(jax.random.PRNGKey(seed), DRAWS)
    batch = jnp.broadcast_to(jnp.asarray(logits), (DRAWS, logits.size))
    tokens, _ = jax.jit(next_tokens, static_argnums=2)(batch, keys, cfg)
    return np.bincount(np.asarray(tokens), minlength=logits.size)


@pytest.fixture(scope="module")
def logits():
    return np.random.default_rng(0).normal(size=V).astype(np.float32) * 1.5


@pytest.mark.parametrize("cfg", [
    SamplingConfig(True, temperature=1.0),
    SamplingConfig(True, temperature=0.6),
    SamplingConfig(True, temperature=1.3, top_k=7),
    SamplingConfig(True, temperature=0.8, top_p=0.7),
    SamplingConfig(True, temperature=0.6, top_p=0.9, top_k=12),
], ids=["t1", "t0.6", "topk7", "topp0.7", "topk12-topp0.9"])
def test_frequencies_match_filtered_softmax(logits, cfg):
    counts = draw(logits, cfg)
    expected = reference_distribution(logits, cfg) * DRAWS
    assert counts[expected == 0].sum() == 0, "a filtered-out token was sampled"
    support = expected > 0
    chi2 = float((((counts - expected) ** 2)[support] / expected[support]).sum())
    dof = int(support.sum()) - 1
    # the 99.9% quantile of chi-square is below dof + 4.5 * sqrt(2 dof) + 10 for these dof
    assert chi2 < dof + 4.5 * np.sqrt(2 * dof) + 10, (chi2, dof)


def test_top_p_cut_is_exact(logits):
    rng = np.random.default_rng(1)
    cut = jax.jit(_top_p_cut)
    for trial in range(30):
        x = (rng.normal(size=500) * rng.uniform(0.1, 8)).astype(np.float32)
        if trial % 3 == 0:
            x[rng.integers(0, 500, 40)] = -np.inf  # banned tokens
        top_p = float(rng.uniform(0.02, 0.995))
        kept = x >= float(cut(jnp.asarray(x), top_p))
        np.testing.assert_array_equal(kept, reference_distribution(x, SamplingConfig(True, top_p=top_p)) > 0)


def test_greedy_and_logprobs(logits):
    batch = jnp.asarray(np.stack([logits, logits[::-1]]))
    tokens, logprobs = next_tokens(batch, jax.random.split(jax.random.PRNGKey(0), 2), SamplingConfig())
    np.testing.assert_array_equal(tokens, [logits.argmax(), V - 1 - logits.argmax()])
    np.testing.assert_allclose(logprobs, jax.nn.log_softmax(batch)[0, logits.argmax()] * np.ones(2), rtol=1e-6)


def test_logprobs_are_of_the_unfiltered_distribution(logits):
    cfg = SamplingConfig(True, temperature=0.5, top_k=3)
    batch = jnp.broadcast_to(jnp.asarray(logits), (64, V))
    tokens, logprobs = next_tokens(batch, jax.random.split(jax.random.PRNGKey(3), 64), cfg)
    np.testing.assert_allclose(logprobs, jax.nn.log_softmax(jnp.asarray(logits))[tokens], rtol=1e-6)


def test_banned_ids_only_for_banned_rows(logits):
    top = int(logits.argmax())
    batch = jnp.broadcast_to(jnp.asarray(logits), (2, V))
    tokens, _ = next_tokens(batch, jax.random.split(jax.random.PRNGKey(0), 2), SamplingConfig(),
                            banned_ids=jnp.asarray([top]), ban=jnp.asarray([True, False]))
    assert int(tokens[0]) != top and int(tokens[1]) == top


def test_same_keys_same_tokens_and_rows_differ(logits):
    cfg = SamplingConfig(True, temperature=2.0)
    batch = jnp.broadcast_to(jnp.asarray(logits), (16, V))
    keys = jax.random.split(jax.random.PRNGKey(5), 16)
    a, _ = next_tokens(batch, keys, cfg)
    b, _ = next_tokens(batch, keys, cfg)
    np.testing.assert_array_equal(a, b)
    assert len(set(np.asarray(a).tolist())) > 3


@pytest.mark.parametrize("kwargs", [dict(temperature=0.0), dict(top_p=0.0), dict(top_p=1.5), dict(top_k=-1),
                                    dict(top_k=2.5)])
def test_bad_config(kwargs):
    with pytest.raises(ValueError):
        SamplingConfig(True, **kwargs)


@pytest.mark.parametrize("vocab", [40, 41, 1000, 128256])
def test_greedy_is_the_first_unbanned_maximum(vocab):
    """Ties (first one wins, as argmax), banned ids anywhere (also the maximum and a whole tie), padding ids."""
    rng = np.random.default_rng(vocab)
    rows = 12
    x = rng.integers(-4, 5, size=(rows, vocab)).astype(np.float32)  # many ties
    x[3, rng.integers(0, vocab, 5)] = 9.0                            # a tie at the top
    banned = np.array([int(x[0].argmax()), vocab - 1, 0, *np.flatnonzero(x[3] == 9.0)[:2], vocab, vocab + 7])
    ban = rng.random(rows) < 0.6
    ban[[0, 3]] = True
    tokens, logprobs = next_tokens(jnp.asarray(x), jax.random.split(jax.random.PRNGKey(0), rows), SamplingConfig(),
                                   banned_ids=jnp.asarray(banned), ban=jnp.asarray(ban))
    masked = x.copy()
    real = banned[banned < vocab]
    masked[np.ix_(ban, real)] = -np.inf
    np.testing.assert_array_equal(tokens, masked.argmax(axis=1))
    log_softmax = x - np.log(np.exp(x - x.max(1, keepdims=True)).sum(1, keepdims=True)) - x.max(1, keepdims=True)
    np.testing.assert_allclose(logprobs, log_softmax[np.arange(rows), masked.argmax(axis=1)], rtol=1e-5, atol=1e-6)
