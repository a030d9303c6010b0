"""The Llama-3.2-Vision tokenizer built from llama-models' BPE ranks: ids, special tokens, parity with tiktoken."""
import random

import pytest
from llama_models.llama3.tokenizer import Tokenizer as MetaTokenizer

from llavao1_jax.processor import tokenizer as llama_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return llama_tokenizer.build_tokenizer()


@pytest.fixture(scope="module")
def meta():
    return MetaTokenizer(llama_tokenizer.default_ranks_file())


TEXTS = [
    "Hello world",
    "If I had to write a haiku for this one",
    "  leading spaces, trailing spaces   ",
    "I'LL BE THERE, you're sure? We'd've... DON'T",
    "Numbers: 1 12 123 1234 12345678901234567890 3.14159 -42 1,000,000",
    "def f(x):\n    return {'a': [x, x ** 2]}  # comment\n\n\n\tindented\r\nwindows\n",
    "Ünïcödé façade naïve Straße ΑΒΓ δέλτα Москва",
    "中文分词测试，日本語のテキスト、한국어 문장입니다。",
    "مرحبا بالعالم  שלום עולם  नमस्ते दुनिया  สวัสดีชาวโลก",
    "emoji 🙂🙃 family 👩‍👩‍👧‍👦 flags 🇫🇷🇯🇵 skin 👍🏽 keycap 1️⃣",
    "math ∑ᵢ xᵢ² ≤ ∞, → ⇒ ∀∃ ∂∇ ½ ¾ ℝ",
    "\u200b zero width \u00a0 nbsp \u3000 ideographic space \ufeff bom",
    "<|image|> is a special token here and plain text for the reference",
    " \n \n\n   \n\t\t \r\r\n",
    "a" * 300 + " " + "b" * 17,
    "https://example.com/path?q=1&r=two#frag user@example.org",
    "<html><body class=\"x\">Hi &amp; bye</body></html>",
]


def _random_unicode(seed: int, length: int) -> str:
    rng = random.Random(seed)
    ranges = [(0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x6FF), (0x900, 0x97F),
              (0x3040, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0x1F300, 0x1FAFF), (0x10000, 0x1007F)]
    chars = []
    for _ in range(length):
        if rng.random() < 0.15:
            chars.append(rng.choice(" \n\t\r'"))
        else:
            low, high = rng.choice(ranges)
            chars.append(chr(rng.randint(low, high)))
    return "".join(chars)


RANDOM_TEXTS = [_random_unicode(seed, 400) for seed in range(12)]


def test_vocabulary_layout(tokenizer):
    assert len(tokenizer) == 128_257
    expected = {
        "<|begin_of_text|>": 128000, "<|end_of_text|>": 128001, "<|reserved_special_token_0|>": 128002,
        "<|reserved_special_token_1|>": 128003, "<|finetune_right_pad_id|>": 128004, "<|step_id|>": 128005,
        "<|start_header_id|>": 128006, "<|end_header_id|>": 128007, "<|eom_id|>": 128008, "<|eot_id|>": 128009,
        "<|python_tag|>": 128010, "<|reserved_special_token_2|>": 128011, "<|reserved_special_token_246|>": 128255,
        "<|image|>": 128256,
    }
    assert {token: tokenizer.convert_tokens_to_ids(token) for token in expected} == expected
    specials = llama_tokenizer.special_tokens()
    assert len(specials) == 257 and len(set(specials)) == 257
    assert tokenizer.convert_ids_to_tokens(list(range(128000, 128257))) == specials
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (128000, 128009, 128004)


def test_known_ids(tokenizer):
    assert tokenizer("Hello world").input_ids == [9906, 1917]
    assert tokenizer("Hello world", add_special_tokens=True).input_ids == [9906, 1917]  # no automatic BOS
    assert tokenizer("<|image|><|begin_of_text|>If I had to write a haiku for this one").input_ids == [
        128256, 128000, 2746, 358, 1047, 311, 3350, 264, 6520, 39342, 369, 420, 832]


@pytest.mark.parametrize("text", TEXTS + RANDOM_TEXTS, ids=lambda text: repr(text[:12]))
def test_base_ids_match_llama_models_tiktoken(tokenizer, meta, text):
    text = text.replace("<|image|>", "<image>")  # the reference encodes special-token text as plain text
    assert tokenizer.encode(text) == meta.encode(text, bos=False, eos=False)


@pytest.mark.parametrize("text", TEXTS + RANDOM_TEXTS, ids=lambda text: repr(text[:12]))
def test_round_trip(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_special_tokens_in_text_and_decoding(tokenizer):
    ids = tokenizer.encode("<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>")
    assert ids == [128006, 882, 128007, 271, 13347, 128009]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "user\n\nHi"
    assert tokenizer.decode([128256, 9906]) == "<|image|>Hello"


def test_bad_ranks_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.model"):
        llama_tokenizer.read_bpe_ranks(tmp_path / "missing.model")
    bad = tmp_path / "bad.model"
    bad.write_text("IQ== 0\nnot-base64!! x\n")
    with pytest.raises(ValueError, match="bad.model, line 2"):
        llama_tokenizer.read_bpe_ranks(bad)
    gap = tmp_path / "gap.model"
    gap.write_text("IQ== 0\nIg== 2\n")
    with pytest.raises(ValueError, match="consecutive"):
        llama_tokenizer.read_bpe_ranks(gap)
    short = tmp_path / "short.model"
    short.write_text("IQ== 0\n")
    with pytest.raises(ValueError, match="expected 128000 base tokens"):
        llama_tokenizer.build_tokenizer(short)


def test_split_pattern_is_llama3s():
    assert llama_tokenizer.SPLIT_PATTERN == MetaTokenizer.pat_str
