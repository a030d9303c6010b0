"""Sampling: the distribution against transformers' warpers (chi-square), tie rules, keys, banning, log-probabilities,
greedy choice."""
import contextlib
import functools
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from scipy import stats
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from llavao1_jax.inference.sampling import SamplingConfig, next_tokens

V = 48
DRAWS = 40000
choose = jax.jit(next_tokens, static_argnums=2)


def transformers_probs(logits: np.ndarray, cfg: SamplingConfig, stable: bool = True) -> np.ndarray:
    """[R, V] probabilities of transformers' temperature -> top-k -> top-p warpers on float32 `logits` [R, V];
    `stable`: its top-p sort made stable (torch's default CPU sort orders ties by its sorting network)."""
    warpers = [TemperatureLogitsWarper(cfg.temperature)]
    warpers += [TopKLogitsWarper(cfg.top_k)] if cfg.top_k else []
    warpers += [TopPLogitsWarper(cfg.top_p)] if cfg.top_p < 1 else []
    scores = torch.from_numpy(np.asarray(logits, np.float32))
    with mock.patch.object(torch, "sort", functools.partial(torch.sort, stable=True)) if stable else contextlib.nullcontext():
        for warper in warpers:
            scores = warper(None, scores)
    return torch.softmax(scores.double(), dim=-1).numpy()


def draw_counts(logits: np.ndarray, cfg: SamplingConfig, draws: int = DRAWS, seed: int = 0) -> np.ndarray:
    """Token counts [R, V] of `draws` samples from each row of logits [R, V], all in one call."""
    rows, vocab = logits.shape
    batch = jnp.repeat(jnp.asarray(logits, jnp.float32), draws, axis=0)
    tokens, _ = choose(batch, jax.random.split(jax.random.PRNGKey(seed), rows * draws), cfg)
    tokens = np.asarray(tokens).reshape(rows, draws)
    return np.stack([np.bincount(row, minlength=vocab) for row in tokens])


def chi_square_p(counts: np.ndarray, probs: np.ndarray) -> float:
    """P-value of counts [V] against probabilities [V] (support only; tokens expected under 5 times pooled; 1 for a
    single-token support, which the support check decides)."""
    expected = probs * counts.sum()
    small = (expected > 0) & (expected < 5)
    big = expected >= 5
    observed = np.append(counts[big], counts[small].sum())
    expected = np.append(expected[big], expected[small].sum())
    keep = expected > 0
    if keep.sum() < 2:
        return 1.0
    return float(stats.chi2.sf((((observed - expected) ** 2)[keep] / expected[keep]).sum(), keep.sum() - 1))


def assert_distribution(counts: np.ndarray, probs: np.ndarray):
    """Per row: no token outside the support, and chi-square below its 99.9% quantile."""
    for row, (c, p) in enumerate(zip(counts, probs)):
        assert c[p == 0].sum() == 0, f"row {row}: filtered-out tokens {np.flatnonzero((p == 0) & (c > 0))} sampled"
        assert chi_square_p(c, p) > 1e-3, f"row {row}: chi-square p-value {chi_square_p(c, p):.2e}"


def bf16(x) -> np.ndarray:
    return torch.tensor(np.asarray(x, np.float32)).bfloat16().float().numpy()


def logit_rows() -> dict[str, np.ndarray]:
    """[1, V] rows: flat (like a random model's), peaked (a few tokens hold most of the mass), and bf16-rounded
    values on a coarse grid (many ties, also at the top-k and top-p boundaries)."""
    rng = np.random.default_rng(0)
    normal = rng.normal(size=(1, V)).astype(np.float32)
    return {"flat": normal * 0.5, "peaked": normal * 3.0, "tied": bf16(np.round(normal * 2) / 2)}


CONFIGS = {
    "t0.6": SamplingConfig(True, temperature=0.6),
    "t1.3-topk7": SamplingConfig(True, temperature=1.3, top_k=7),
    "t0.6-topp0.9": SamplingConfig(True, temperature=0.6, top_p=0.9),
    "t0.6-topk12-topp0.9": SamplingConfig(True, temperature=0.6, top_p=0.9, top_k=12),
    "t1-topp0.3": SamplingConfig(True, temperature=1.0, top_p=0.3),  # mostly rejected draws: many retries
}


@pytest.mark.parametrize("kind", ["flat", "peaked", "tied"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_frequencies_match_transformers_warpers(kind, name):
    """40k draws against transformers' filtered softmax on the same logits (seeded, cut at the 99.9% quantile).

    Mutants caught: the temperature 10% off (see the next test), retries reusing the first draw's uniform number
    (t1-topp0.3)."""
    logits = logit_rows()[kind]
    cfg = CONFIGS[name]
    assert_distribution(draw_counts(logits, cfg), transformers_probs(logits, cfg))


@pytest.mark.parametrize("kind", ["flat", "peaked"])
def test_the_chi_square_test_catches_a_ten_percent_temperature_error(kind):
    """The test above has the power it claims: a sampler running 10% hot fails it (also with top_p=0.9, checked
    when this test was written; one configuration here keeps the suite fast)."""
    logits = logit_rows()[kind]
    hot = draw_counts(logits, SamplingConfig(True, temperature=0.66))
    assert chi_square_p(hot[0], transformers_probs(logits, CONFIGS["t0.6"])[0]) < 1e-3


def test_top_k_keeps_every_token_tied_with_the_kth():
    """top_k=2 over [3, 2, 2, 2, 0, ...] keeps {0, 1, 2, 3}, as transformers does (mutant caught: `>` for `>=`)."""
    logits = np.zeros((1, V), np.float32)
    logits[0, :4] = [3, 2, 2, 2]
    cfg = SamplingConfig(True, top_k=2)
    probs = transformers_probs(logits, cfg)
    np.testing.assert_array_equal(np.flatnonzero(probs[0]), [0, 1, 2, 3])
    assert_distribution(draw_counts(logits, cfg), probs)


@pytest.mark.parametrize("name", ["t0.6-topp0.9", "t1-topp0.3", "t0.6-topk12-topp0.9"])
def test_kept_sets_on_bf16_ties_match_transformers(name):
    """Rows of bf16 logits on a coarse grid (every kept token likely enough to be drawn): the sampled support is
    transformers' kept set with a stable sort (ties: higher ids kept first), and has as many tokens and as much
    mass as the set its default, unstable CPU sort keeps. Mutants caught: top-p ties broken towards lower ids, and
    every tied token at the top-p boundary kept."""
    cfg = CONFIGS[name]
    logits = bf16(np.random.default_rng(1).integers(0, 4, size=(16, V)) * 0.25)
    support = draw_counts(logits, cfg, draws=DRAWS // 16) > 0
    stable = transformers_probs(logits, cfg)
    np.testing.assert_array_equal(support, stable > 0)
    default = transformers_probs(logits, cfg, stable=False)
    np.testing.assert_array_equal(support.sum(axis=1), (default > 0).sum(axis=1))
    full = transformers_probs(logits, SamplingConfig(True, temperature=cfg.temperature))
    np.testing.assert_allclose(np.where(support, full, 0).sum(1), np.where(default > 0, full, 0).sum(1), rtol=1e-6)


def test_rows_are_reproducible_and_independent_of_their_batch():
    """A row's token depends only on its key and logits: the same in a batch of 16 and of 40k rows (other rows, other
    retries), different across keys. Catches keys shared across rows or retries drawn for the wrong rows."""
    cfg = CONFIGS["t1-topp0.3"]
    logits = np.repeat(logit_rows()["flat"], DRAWS, axis=0)
    keys = jax.random.split(jax.random.PRNGKey(5), DRAWS)
    small, _ = choose(jnp.asarray(logits[:16]), keys[:16], cfg)
    big, _ = choose(jnp.asarray(logits), keys, cfg)
    again, _ = choose(jnp.asarray(logits), keys, cfg)
    np.testing.assert_array_equal(big, again)
    np.testing.assert_array_equal(small, big[:16])
    assert len(set(np.asarray(big).tolist())) > 3


def test_logprobs_are_of_the_unfiltered_distribution():
    logits = logit_rows()["flat"][0]
    batch = jnp.broadcast_to(jnp.asarray(logits), (DRAWS, V))
    tokens, logprobs = choose(batch, jax.random.split(jax.random.PRNGKey(3), DRAWS), CONFIGS["t0.6-topk12-topp0.9"])
    np.testing.assert_allclose(logprobs, jax.nn.log_softmax(jnp.asarray(logits))[tokens], rtol=1e-6)


def test_banned_ids_are_never_sampled():
    logits = logit_rows()["peaked"]
    top = int(logits.argmax())
    batch = jnp.asarray(np.repeat(logits, 2000, axis=0))
    ban = jnp.arange(2000) % 2 == 0
    tokens, _ = choose(batch, jax.random.split(jax.random.PRNGKey(0), 2000), CONFIGS["t0.6-topp0.9"],
                       jnp.asarray([top, V + 3]), ban)
    tokens = np.asarray(tokens)
    assert top not in tokens[0::2] and top in tokens[1::2]


def test_greedy_and_logprobs():
    logits = logit_rows()["flat"][0]
    batch = jnp.asarray(np.stack([logits, logits[::-1]]))
    tokens, logprobs = next_tokens(batch, jax.random.split(jax.random.PRNGKey(0), 2), SamplingConfig())
    np.testing.assert_array_equal(tokens, [logits.argmax(), V - 1 - logits.argmax()])
    np.testing.assert_allclose(logprobs, jax.nn.log_softmax(batch)[0, logits.argmax()] * np.ones(2), rtol=1e-6)


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
