"""Generation against transformers (greedy parity) and against our own full-sequence forward (cache correctness),
plus the row operations searches use (fork, select, teacher forcing) and input errors."""
import jax
import numpy as np
import pytest
from flax import nnx

import llavao1_jax as lj
from hf_reference import make_batch, saved_hf_model
from llavao1_jax import inference
from llavao1_jax.inference import engine
from llavao1_jax.sharding import make_mesh

NEW = 40


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return saved_hf_model(tmp_path_factory.mktemp("hf_tiny_generate"), seed=1)


@pytest.fixture(scope="module")
def ours(checkpoint):
    return lj.load_pretrained(checkpoint[1], scan_layers=False)


@pytest.fixture(scope="module")
def gen(ours):
    return inference.Generator(ours)


def image_batch():
    """Two prompts of different lengths (left-padded): a 4-tile image and a 2-tile + 3-tile pair."""
    return make_batch(np.random.default_rng(11), [[6, 0], [5, 7]], 13, [[4, -1], [2, 6]], left_pad=[4, 0])


def text_batch():
    rng = np.random.default_rng(12)
    ids = rng.integers(3, 99, (2, 9))
    mask = np.ones((2, 9), np.int64)
    mask[1, :3] = 0
    ids[1, :3] = 0
    return dict(input_ids=ids, attention_mask=mask)


def hf_generate(model, batch, **kwargs):
    import torch

    with torch.no_grad():
        out = model.generate(**{k: torch.from_numpy(np.asarray(v)) for k, v in batch.items()}, do_sample=False,
                             **kwargs)
    return out[:, batch["input_ids"].shape[1]:].numpy()


@pytest.mark.parametrize("make", [image_batch, text_batch], ids=["images", "text"])
def test_greedy_matches_transformers(checkpoint, ours, make):
    batch = make()
    out = lj.generate(ours, batch, max_new_tokens=NEW, min_new_tokens=NEW)
    np.testing.assert_array_equal(out.tokens, hf_generate(checkpoint[0], batch, max_new_tokens=NEW,
                                                          min_new_tokens=NEW))
    assert out.lengths.tolist() == [NEW, NEW] and out.finish_reason == ["length", "length"]


def test_greedy_stops_at_eos_like_transformers(checkpoint, ours):
    batch = image_batch()
    free = hf_generate(checkpoint[0], batch, max_new_tokens=NEW, min_new_tokens=NEW)
    eos = int(free[0, 9])  # a token row 0 produces at step 10: make it the eos id
    ref = hf_generate(checkpoint[0], batch, max_new_tokens=NEW, eos_token_id=eos, pad_token_id=0)
    out = lj.generate(ours, batch, max_new_tokens=NEW, stop_token_ids=[eos])
    for row, n, reason, expected in zip(out.tokens, out.lengths, out.finish_reason, ref):
        stop = np.flatnonzero(expected == eos)
        want = expected[:stop[0] + 1] if stop.size else expected
        np.testing.assert_array_equal(row[:n], want)
        assert reason == ("stop_token" if stop.size else "length")
        assert not row[n:].any()
    assert out.finish_reason[0] == "stop_token" and out.lengths[0] <= 10


def test_min_new_tokens_like_transformers(checkpoint, ours):
    """Stop tokens are masked for the first min_new_tokens steps as transformers' `min_new_tokens` masks eos: the eos
    id is the token row 0 picks at step 2, so its greedy path changes there, and row 1 stops after step 5 where
    transformers' does. Catches min_new_tokens ignored or applied to the wrong steps."""
    batch = image_batch()
    free = hf_generate(checkpoint[0], batch, max_new_tokens=NEW, min_new_tokens=NEW)
    eos = int(free[0, 1])
    ref = hf_generate(checkpoint[0], batch, max_new_tokens=NEW, min_new_tokens=5, eos_token_id=eos, pad_token_id=0)
    out = lj.generate(ours, batch, max_new_tokens=NEW, min_new_tokens=5, stop_token_ids=[eos])
    for row, n, expected in zip(out.tokens, out.lengths, ref):
        stop = np.flatnonzero(expected == eos)
        np.testing.assert_array_equal(row[:n], expected[:stop[0] + 1] if stop.size else expected)
    assert eos not in ref[0, :5] and (ref[0, :5] != free[0, :5]).any() and eos in ref[1, 5:]


def test_cache_matches_full_forward(ours, gen):
    """Logits after prefill and after every teacher-forced token equal the full-sequence forward logits, and the
    decode loop's log-probabilities are those of the forward pass."""
    batch = image_batch()
    out = lj.generate(ours, batch, max_new_tokens=12, min_new_tokens=12)
    full = dict(batch)
    full["input_ids"] = np.concatenate([batch["input_ids"], out.tokens], axis=1)
    full["attention_mask"] = np.concatenate([batch["attention_mask"], np.ones_like(out.tokens)], axis=1)
    last = batch["cross_attention_mask"][:, -1:]
    full["cross_attention_mask"] = np.concatenate([batch["cross_attention_mask"]] + [last] * 12, axis=1)
    logits = np.asarray(ours(**full))
    s = batch["input_ids"].shape[1]
    scale = np.abs(logits).max()

    state = gen.prefill(batch, max_new_tokens=12)
    for t in range(12):
        np.testing.assert_allclose(np.asarray(state.logits), logits[:, s - 1 + t], atol=2e-5 * scale)
        state = gen.append_tokens(state, out.tokens[:, t:t + 1])
    chosen = np.take_along_axis(jax.nn.log_softmax(logits[:, s - 1:-1]), out.tokens[..., None], -1)[..., 0]
    np.testing.assert_allclose(out.logprobs, chosen, atol=1e-4)


def test_right_padding_and_bucketing_give_the_same_tokens(ours):
    batch = image_batch()
    left = lj.generate(ours, batch, max_new_tokens=8, min_new_tokens=8)
    right = dict(batch)
    for name in ("input_ids", "attention_mask", "cross_attention_mask"):
        right[name] = batch[name].copy()
        right[name][0] = np.roll(batch[name][0], -4, axis=0)  # row 0 had 4 left pads
    np.testing.assert_array_equal(lj.generate(ours, right, max_new_tokens=8, min_new_tokens=8).tokens, left.tokens)


def test_prompt_lengths_share_a_bucket_without_recompiling(ours):
    rng = np.random.default_rng(3)
    lj.generate(ours, dict(input_ids=rng.integers(3, 99, (1, 20))), max_new_tokens=4)
    prefills, decodes = engine.prefill._cache_size(), engine.decode._cache_size()
    for length in (17, 25, 31):
        lj.generate(ours, dict(input_ids=rng.integers(3, 99, (1, length))), max_new_tokens=4, stop_token_ids=[5, 6])
    assert engine.prefill._cache_size() == prefills and engine.decode._cache_size() == decodes


def test_fork_continues_each_prefix(ours, gen):
    batch = image_batch()
    greedy = lj.generate(ours, batch, max_new_tokens=6, min_new_tokens=6)
    forked = inference.fork(gen.prefill(batch, max_new_tokens=16), 3)
    out, _ = gen.decode(forked, max_new_tokens=6, min_new_tokens=6)
    np.testing.assert_array_equal(out.tokens, np.repeat(greedy.tokens, 3, axis=0))
    options = dict(max_new_tokens=6, do_sample=True, temperature=1.5)
    sampled, _ = gen.decode(inference.fork(gen.prefill(batch, max_new_tokens=16), 3), **options)
    assert len({tuple(row) for row in sampled.tokens}) == 6  # copies of one prefix sample differently
    again, _ = gen.decode(inference.fork(gen.prefill(batch, max_new_tokens=16), 3), **options)
    np.testing.assert_array_equal(again.tokens, sampled.tokens)
    fresh = inference.reseed(inference.fork(gen.prefill(batch, max_new_tokens=16), 3), seed=1)
    assert (gen.decode(fresh, **options)[0].tokens != sampled.tokens).any()  # a new round of samples


def test_forked_copies_share_the_image_rows(ours, gen):
    """Copies of a prefix share its cross K/V row through forks of forks, teacher forcing and decoding; selecting rows
    gives each its own again."""
    batch = image_batch()
    greedy = lj.generate(ours, batch, max_new_tokens=6, min_new_tokens=6)
    greedy, logprobs = greedy.tokens, greedy.logprobs
    prefix = lambda: gen.prefill(batch, max_new_tokens=16)
    twice = inference.fork(inference.fork(prefix(), 3), 2)
    assert twice.batch_size == 12 and twice.copies == 6 and twice.cache.cross_k[0].shape[0] == 2
    forced = gen.append_tokens(twice, np.repeat(greedy[:, :2], 6, axis=0))
    out, _ = gen.decode(forced, max_new_tokens=4, min_new_tokens=4)
    np.testing.assert_array_equal(out.tokens, np.repeat(greedy[:, 2:], 6, axis=0))
    picked = inference.select_rows(inference.fork(prefix(), 3), np.array([4, 0, 2]))
    assert picked.copies == 1 and picked.cache.cross_k[0].shape[0] == 3
    out, _ = gen.decode(picked, max_new_tokens=6, min_new_tokens=6)
    np.testing.assert_array_equal(out.tokens, greedy[[1, 0, 0]])
    np.testing.assert_allclose(out.logprobs, logprobs[[1, 0, 0]], rtol=1e-5)  # each row read its own image


def test_select_and_append_continue_a_chosen_candidate(ours, gen):
    """A search keeps candidate 1 of 2 (select_rows) or teacher-forces its tokens (append_tokens) onto the prefix;
    both continue exactly like one generation of the whole length."""
    batch = make_batch(np.random.default_rng(5), [[6]], 10, [[2]])
    whole = lj.generate(ours, batch, max_new_tokens=10, min_new_tokens=10)
    first, state = gen.decode(inference.fork(gen.prefill(batch, max_new_tokens=32), 2),
                                    max_new_tokens=4, min_new_tokens=4)
    kept = inference.select_rows(state, np.array([1]))
    rest, _ = gen.decode(kept, max_new_tokens=6, min_new_tokens=6)
    np.testing.assert_array_equal(np.concatenate([first.tokens[1], rest.tokens[0]]), whole.tokens[0])
    forced = gen.append_tokens(gen.prefill(batch, max_new_tokens=32),
                                     whole.tokens[:, :4])
    rest, _ = gen.decode(forced, max_new_tokens=6, min_new_tokens=6)
    np.testing.assert_array_equal(rest.tokens[0], whole.tokens[0, 4:])


def test_append_rows_of_different_lengths(ours, gen):
    rng = np.random.default_rng(6)
    prompt, extra = rng.integers(3, 99, (2, 7)), rng.integers(3, 99, (2, 5))
    mask = np.ones((2, 5), bool)
    mask[1, 3:] = False
    state = gen.append_tokens(gen.prefill(dict(input_ids=prompt), max_new_tokens=8), extra,
                                    mask)
    for row, n in ((0, 5), (1, 3)):
        ref = np.asarray(ours(np.concatenate([prompt[row], extra[row, :n]])[None]))[0, -1]
        np.testing.assert_allclose(np.asarray(state.logits[row]), ref, atol=1e-5 * np.abs(ref).max())


def test_stops_budgets_and_decoder_chunks(ours, gen):
    batch = image_batch()
    free = lj.generate(ours, batch, max_new_tokens=12, stop_token_ids=())
    assert free.finish_reason == ["length", "length"]
    per_row = lj.generate(ours, batch, max_new_tokens=[3, 7], stop_token_ids=())
    assert per_row.lengths.tolist() == [3, 7] and per_row.tokens.shape == (2, 7)
    np.testing.assert_array_equal(per_row.tokens[1], free.tokens[1, :7])
    assert not per_row.tokens[0, 3:].any()
    # streaming in chunks of 3 steps gives the same tokens as one run
    decoder = inference.Decoder(gen, gen.prefill(batch, max_new_tokens=12), max_new_tokens=12,
                                stop_token_ids=())
    chunks = 1
    while not decoder.run(3):
        chunks += 1
        assert decoder.result().finish_reason == ["running", "running"]
    assert chunks == 4
    np.testing.assert_array_equal(decoder.result().tokens, free.tokens)


def test_sampling_seeds(ours):
    batch = make_batch(np.random.default_rng(7), [[6], [6]], 8, [[1], [1]])
    batch = {k: np.repeat(v[:1], 2, axis=0) for k, v in batch.items()}  # two identical rows
    kwargs = dict(max_new_tokens=10, do_sample=True, temperature=1.5, top_p=0.95, stop_token_ids=())
    a = lj.generate(ours, batch, seed=3, **kwargs)
    np.testing.assert_array_equal(a.tokens, lj.generate(ours, batch, seed=3, **kwargs).tokens)
    assert (a.tokens[0] != a.tokens[1]).any(), "rows must get different keys"
    assert (a.tokens != lj.generate(ours, batch, seed=4, **kwargs).tokens).any()


ROWS = 2048  # copies of one prompt sampled at once


def sampling_prompt():
    return dict(input_ids=np.repeat(np.random.default_rng(21).integers(3, 99, (1, 9)), ROWS, axis=0))


def test_first_sampled_token_follows_the_filtered_softmax(ours):
    """Over 2048 copies of one prompt, the first token `lj.generate` samples (temperature 0.25, top_p 0.8) follows
    transformers' temperature + top-p filtered softmax of the forward pass's last logits: nothing outside the nucleus,
    and a seeded chi-square test at the 0.999 quantile. Catches temperature or top_p dropped inside `generate`."""
    import torch
    from scipy.stats import chi2
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    temperature, top_p = 0.25, 0.8
    batch = sampling_prompt()
    logits = torch.tensor(np.asarray(ours(input_ids=batch["input_ids"][:1]))[:, -1])
    filtered = TopPLogitsWarper(top_p)(None, TemperatureLogitsWarper(temperature)(None, logits))
    expected = torch.softmax(filtered, -1)[0].numpy().astype(np.float64)
    kept = expected > 0
    mass = np.sort(torch.softmax(logits / temperature, -1)[0].numpy())[::-1].cumsum()
    assert np.abs(mass - top_p).min() > 1e-3 and 5 < kept.sum() < 90  # a clear cut that removes many tokens
    out = lj.generate(ours, batch, max_new_tokens=1, do_sample=True, temperature=temperature, top_p=top_p,
                      stop_token_ids=(), seed=0)
    counts = np.bincount(out.tokens[:, 0], minlength=len(expected))
    assert not counts[~kept].any(), "sampled a token outside the nucleus"
    want, got = expected[kept] * ROWS, counts[kept]
    small = want < 5
    if small.any():  # pool the rare tokens into one bin
        want, got = np.append(want[~small], want[small].sum()), np.append(got[~small], got[small].sum())
    statistic = ((got - want) ** 2 / want).sum()
    assert statistic < chi2.ppf(0.999, len(want) - 1), (statistic, len(want))


def test_consecutive_steps_draw_independent_keys(ours):
    """At temperature 1000 every token is about equally likely (1/99), so consecutive tokens of a row agree about 1%
    of the time when each step draws a fresh key; one key reused at every step repeats the same Gumbel noise and
    nearly always the same token. Catches a reused step key."""
    out = lj.generate(ours, sampling_prompt(), max_new_tokens=3, do_sample=True, temperature=1000.0,
                      stop_token_ids=(), seed=0)
    repeats = (out.tokens[:, 1:] == out.tokens[:, :-1]).mean()
    assert repeats < 0.03, repeats
    assert len(np.unique(out.tokens)) == 99


def test_sharded_decoding_matches(checkpoint, ours):
    """On a (data 2, tensor 2) mesh of fake CPU devices, with the parameters placed by the project's rules, the cache
    is split by rows and K/V heads; tokens agree with unsharded decoding."""
    batch = image_batch()
    want = lj.generate(ours, batch, max_new_tokens=6, min_new_tokens=6).tokens
    mesh = make_mesh(data=2, fsdp=1, tensor=2, devices=jax.devices()[:4])
    sharded = lj.load_pretrained(checkpoint[1], mesh=mesh, scan_layers=False)
    with jax.set_mesh(mesh):
        sharded_gen = inference.Generator(sharded)
        state = sharded_gen.prefill(batch, max_new_tokens=8)
        spec = state.cache.self_k[0].sharding.spec
        out, state = sharded_gen.decode(state, max_new_tokens=6, min_new_tokens=6)
    assert tuple(spec)[:2] == ("data", "tensor")
    assert state.cache.cross_k[0].sharding.spec[0] == "data"
    np.testing.assert_array_equal(out.tokens, want)
    with jax.set_mesh(mesh):  # copies sharing their image rows across the data shards
        forked = inference.fork(sharded_gen.prefill(batch, max_new_tokens=8), 2)
        out, _ = sharded_gen.decode(forked, max_new_tokens=6, min_new_tokens=6)
    np.testing.assert_array_equal(out.tokens, np.repeat(want, 2, axis=0))


def test_scanned_model_is_converted_once_with_a_warning(checkpoint, ours):
    """A Generator of a scanned model decodes through a per-layer copy made once, when it is built (one warning);
    it generates what the per-layer model generates."""
    scanned = lj.load_pretrained(checkpoint[1])
    batch = text_batch()
    want = lj.generate(ours, batch, max_new_tokens=5).tokens
    with pytest.warns(UserWarning, match=r"per-layer.*scan_layers=False") as record:
        generator = inference.Generator(scanned)
        got = generator.generate(batch, max_new_tokens=5).tokens
        again = generator.generate(batch, max_new_tokens=5).tokens
    assert len([w for w in record if "per-layer" in str(w.message)]) == 1
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(again, want)


def test_decoding_sees_updated_parameters(checkpoint):
    """Generation sees parameter updates (as a training step makes them) through a new Generator, while one built
    before keeps the arrays it was built with, in the LM-head copy (2 rows on CPU) and in the parameters (1 row)
    alike: with a zero LM head every logit ties and greedy decoding picks token 0."""
    model = lj.load_pretrained(checkpoint[1], scan_layers=False)
    generator = inference.Generator(model)
    batches = (text_batch(), {k: v[:1] for k, v in text_batch().items()})
    before = [generator.generate(batch, max_new_tokens=5).tokens for batch in batches]
    assert all((tokens != 0).any() for tokens in before)
    state = nnx.state(model)
    state["language_model"]["lm_head"]["kernel"] = jax.numpy.zeros_like(state["language_model"]["lm_head"]["kernel"])
    nnx.update(model, state)
    for batch, tokens in zip(batches, before):
        np.testing.assert_array_equal(lj.generate(model, batch, max_new_tokens=5).tokens, 0)
        np.testing.assert_array_equal(generator.generate(batch, max_new_tokens=5).tokens, tokens)


@pytest.mark.parametrize("change, message", [
    (dict(position_ids=np.zeros((2, 13), np.int64)), "position_ids"),
    (dict(token_type_ids=np.zeros((2, 13), np.int64)), "unexpected inputs"),
    (dict(attention_mask=np.zeros((2, 13), np.int64)), "have no tokens"),
    (dict(input_ids=np.full((2, 13), 10**6)), "out of vocabulary"),
    (dict(pixel_values=np.zeros((2, 2, 4, 3, 8, 8), np.float32)), "pixel_values shape"),
])
def test_bad_batches(ours, change, message):
    with pytest.raises(ValueError, match=message):
        lj.generate(ours, dict(image_batch(), **change), max_new_tokens=4)


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(max_new_tokens=[3, 4, 5]), "one int per row"),
    (dict(stop_strings=["</SUMMARY>"]), "processor"),
    (dict(stop_token_ids=[10**6]), "outside the vocabulary"),
    (dict(do_sample=True, top_p=0.0), "top_p"),
    (dict(min_new_tokens=-1), "min_new_tokens"),
])
def test_bad_options(ours, kwargs, message):
    with pytest.raises(ValueError, match=message):
        lj.generate(ours, text_batch(), **dict(dict(max_new_tokens=4), **kwargs))


def test_cache_room_is_checked(gen):
    state = gen.prefill(text_batch(), max_new_tokens=8)  # room rounds up to 64
    with pytest.raises(ValueError, match="room"):
        inference.Decoder(gen, state, max_new_tokens=65)
    with pytest.raises(ValueError, match="room"):
        gen.append_tokens(state, np.ones((2, 70), np.int64))
    with pytest.raises(ValueError, match="token ids"):
        gen.append_tokens(state, np.full((2, 3), -1))
