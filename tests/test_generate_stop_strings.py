"""Stop strings on token ids: the automaton against brute-force decoding, the Llama 3 vocabulary as bytes, and
generation that stops on a string."""
import jax.numpy as jnp
import numpy as np
import pytest

import llavao1_jax as lj
from hf_reference import HF_CONFIG, make_batch, make_hf_model
from llavao1_jax.inference import stop_strings


def first_match(vocab, strings, tokens):
    """Brute force: the first step at which the decoded text contains a stop string, and which strings it contains
    then (None if it never does)."""
    text = b""
    for step, token in enumerate(tokens):
        text += vocab[token]
        found = [s.encode() in text for s in strings]
        if any(found):
            return step, found
    return None


def test_automaton_matches_brute_force():
    rng = np.random.default_rng(0)
    alphabet = list(b"<>/SUMARY ab\n")
    vocab = [b""] + [bytes(rng.choice(alphabet, size=rng.integers(1, 5))) for _ in range(200)]
    vocab += [b"</SUMMARY>", b"</", b"SUM", b"MARY>", b">\n\n", b"Y>", "é".encode()]
    strings = ["</SUMMARY>", "MARY", "ab a", "é"]
    tables = stop_strings.build(vocab, strings)
    rows = rng.integers(0, len(vocab), (64, 40))
    state = stop_strings.initial_state(tables, len(rows))
    found = np.full(len(rows), -1)
    which = np.zeros((len(rows), len(strings)), bool)
    for step in range(rows.shape[1]):
        state, matched = stop_strings.step(tables, state, jnp.asarray(rows[:, step]))
        first = (found < 0) & np.asarray(matched).any(axis=1)
        which[first] = np.asarray(matched)[first]
        found = np.where(first, step, found)
    expected = [first_match(vocab, strings, row) for row in rows]
    assert found.tolist() == [-1 if e is None else e[0] for e in expected]
    assert [w.tolist() for w, e in zip(which, expected) if e] == [e[1] for e in expected if e]
    assert sum(e is not None for e in expected) > 20


def test_first_match_reads_the_string_completed_first_within_each_rows_length():
    """`first_match` over finished rows (as verdicts are read after decoding): the index of the first stop
    string the row's text [:length] contains, the lower index on a tie, -1 for none."""
    rng = np.random.default_rng(1)
    vocab = [b""] + [bytes(rng.choice(list(b"I choseresp12 "), size=rng.integers(1, 4))) for _ in range(120)]
    vocab += [b"I choose", b" response", b" 1", b" 2", b"I choose response 1"]
    strings = ["I choose response 1", "I choose response 2"]
    tables = stop_strings.build(vocab, strings)
    rows = rng.integers(0, len(vocab), (96, 30))
    rows[:48, 3:5] = [len(vocab) - 5, len(vocab) - 4]                    # "I choose response" and " 1" or " 2"
    rows[:48, 5] = len(vocab) - 3 + rng.integers(0, 2, 48)
    lengths = rng.integers(0, 31, len(rows))
    got = np.asarray(stop_strings.first_match(tables, jnp.asarray(rows), jnp.asarray(lengths)))
    expected = [first_match(vocab, strings, row[:length]) for row, length in zip(rows, lengths)]
    assert got.tolist() == [-1 if e is None else e[1].index(True) for e in expected]
    assert {-1, 0, 1} <= set(got.tolist())


@pytest.fixture(scope="module")
def processor():
    return lj.Processor.llama3_2_vision()


@pytest.fixture(scope="module")
def tokenizer(processor):
    return processor.tokenizer


def test_llama_vocabulary_bytes_and_tokenisations(tokenizer):
    vocab = stop_strings.vocab_bytes(tokenizer, 128256)
    text = "Ünïcödé <SUMMARY>a plan</SUMMARY>\n\n<CAPTION> 中文 🙂"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert b"".join(vocab[i] for i in ids) == text.encode()
    tables = stop_strings.build(vocab, ["</SUMMARY>"])
    pieces = [["</SUMMARY>"], ["</", "SUM", "MARY", ">"], ["x</SUM", "MARY>\n\n"], ["</SUMMARY", ">."]]
    for split in pieces + [["<SUMMARY>", " plan"]]:
        ids = [i for piece in split for i in tokenizer.encode(piece, add_special_tokens=False)]
        state = stop_strings.initial_state(tables, 1)
        hits = []
        for i in ids:
            state, matched = stop_strings.step(tables, state, jnp.asarray([i]))
            hits.append(bool(matched[0, 0]))
        assert any(hits) == ("</SUMMARY>" in "".join(split)), split
        assert not any(hits[:-1]), "must fire on the token that completes the string, not before"


class PieceTokenizer:
    """A 99-token tokenizer for the tiny model: token i is the text 't{i};'."""

    def __len__(self):
        return 99

    def convert_ids_to_tokens(self, ids):
        return [f"t{i};" for i in ids]

    def decode(self, ids, skip_special_tokens=False):
        return "".join(f"t{i};" for i in ids)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf_tiny_stop")
    make_hf_model(seed=2).save_pretrained(path, safe_serialization=True)
    return lj.load_pretrained(path, scan_layers=False)


def test_generation_stops_on_a_string(model):
    batch = make_batch(np.random.default_rng(8), [[6], [2]], 9, [[1], [3]])
    free = lj.generate(model, batch, max_new_tokens=16, min_new_tokens=16)
    tok = PieceTokenizer()
    row = free.tokens[0].tolist()
    end = next(e for e in range(4, 16) if tok.decode(row[e - 2:e + 1]) not in tok.decode(row[:e]))
    stop = tok.decode(row[end - 2:end + 1])[1:]  # "1;t2;t3;": starts inside a token
    out = lj.generate(model, batch, max_new_tokens=16, stop_strings=[stop], processor=tok, stop_token_ids=())
    assert out.finish_reason[0] == "stop_string" and out.lengths[0] == end + 1
    assert out.stop_string[0] == stop
    never = "t1000;"  # no token id 1000: the row reports the string that did end it
    both = lj.generate(model, batch, max_new_tokens=16, stop_strings=[never, stop], processor=tok, stop_token_ids=())
    assert both.stop_string[0] == stop and both.lengths[0] == end + 1
    assert [s for s, r in zip(both.stop_string, both.finish_reason) if r != "stop_string"] == [None] * sum(
        r != "stop_string" for r in both.finish_reason)
    assert out.texts[0] == tok.decode(row[:end + 1]) and out.texts[0].endswith(stop)
    late = lj.generate(model, batch, max_new_tokens=16, stop_strings=[stop], processor=tok, stop_token_ids=(),
                       min_new_tokens=end + 2)
    assert late.lengths[0] > end + 1



def test_generation_stops_on_a_string_with_the_llama_processor(processor, tmp_path):
    """End to end with `Processor.llama3_2_vision()` on a tiny random model with the real 128,256-token vocabulary:
    a row stops on the token that completes a stop string starting inside an earlier token, and `texts` ends with it."""
    tokenizer = processor.tokenizer
    config = {**HF_CONFIG, "image_token_index": 128256, "text_config": dict(HF_CONFIG["text_config"], vocab_size=128256)}
    make_hf_model(seed=3, config=config).save_pretrained(tmp_path, safe_serialization=True)
    model = lj.load_pretrained(tmp_path, scan_layers=False)
    batch = dict(input_ids=np.asarray([tokenizer.encode("<SUMMARY> The plan", add_special_tokens=True)]))
    options = dict(max_new_tokens=16, do_sample=True, stop_token_ids=(), seed=0)
    row = lj.generate(model, batch, **options).tokens[0].tolist()
    texts = [tokenizer.decode(row[:n], skip_special_tokens=True) for n in range(17)]
    end, stop = next((e, texts[e + 1][len(texts[e]) - 2:]) for e in range(4, 16)
                     if len(texts[e]) >= 2 and texts[e + 1].startswith(texts[e]) and "\ufffd" not in texts[e + 1]
                     and texts[e + 1][len(texts[e]) - 2:] not in texts[e] and len(texts[e + 1]) > len(texts[e]))
    out = lj.generate(model, batch, stop_strings=[stop], processor=processor, **options)
    assert out.finish_reason == ["stop_string"] and out.lengths.tolist() == [end + 1]
    assert out.texts == [texts[end + 1]] and out.texts[0].endswith(stop)
