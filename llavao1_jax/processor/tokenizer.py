"""The Llama-3.2-Vision tokenizer, built offline from the BPE ranks that ship with the `llama-models` package.

`llama_models/llama3/tokenizer.model` is a tiktoken ranks file (one `base64(token bytes) rank` per line, 128,000 lines).
It becomes a byte-level BPE `tokenizers.Tokenizer` in the Hugging Face layout of the released checkpoint:

* base tokens keep their rank as id, spelt in the GPT-2 byte-to-unicode alphabet;
* the merge list holds every split `a + b` of a token whose two halves are tokens too, ordered by the rank of the merged
  token (then by the ranks of the halves). With `ignore_merges` (a pre-token that is itself a token is taken whole) this
  reproduces tiktoken's "merge the adjacent pair of lowest rank" exactly;
* 256 special tokens follow at 128000..128255 in the Llama-3.1 order, then `<|image|>` at 128256 (vocabulary 128,257);
* no template adds BOS: `add_special_tokens=True` inserts nothing, the processor and the chat template write
  `<|begin_of_text|>` as text.
"""
import base64
import contextlib
import functools
import os
from importlib import resources
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors


@contextlib.contextmanager
def _without_advisory_warnings():
    """transformers >= 5 prints "PyTorch was not found" when it is imported without torch; only its tokenizer
    classes are used here, so that advice is silenced for the import (its own switch, restored afterwards)."""
    name = "TRANSFORMERS_NO_ADVISORY_WARNINGS"
    before = os.environ.get(name)
    os.environ[name] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ[name]
        else:
            os.environ[name] = before


with _without_advisory_warnings():
    from transformers import PreTrainedTokenizerFast

from llavao1_jax.processor.chat_template import CHAT_TEMPLATE

# Llama 3's pre-tokenisation pattern (contractions, letters, 1-3 digit groups, punctuation runs, newlines, spaces).
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
NUM_BASE_TOKENS = 128_000
NUM_RESERVED_SPECIAL_TOKENS = 256
BOS_TOKEN = "<|begin_of_text|>"
END_OF_TEXT_TOKEN = "<|end_of_text|>"
PAD_TOKEN = "<|finetune_right_pad_id|>"
START_HEADER_TOKEN = "<|start_header_id|>"
END_HEADER_TOKEN = "<|end_header_id|>"
EOM_TOKEN = "<|eom_id|>"
EOT_TOKEN = "<|eot_id|>"
PYTHON_TAG_TOKEN = "<|python_tag|>"
IMAGE_TOKEN = "<|image|>"
_NAMED_SPECIAL_TOKENS = (
    BOS_TOKEN,
    END_OF_TEXT_TOKEN,
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    PAD_TOKEN,
    "<|step_id|>",
    START_HEADER_TOKEN,
    END_HEADER_TOKEN,
    EOM_TOKEN,
    EOT_TOKEN,
    PYTHON_TAG_TOKEN,
)
MODEL_MAX_LENGTH = 131_072


def special_tokens() -> list[str]:
    """The 257 special tokens in id order, starting at id 128000 and ending with `<|image|>` at 128256."""
    # The named tokens already include reserved tokens 0 and 1, so the numbering goes on from 2.
    num_reserved = NUM_RESERVED_SPECIAL_TOKENS - len(_NAMED_SPECIAL_TOKENS)
    reserved = [f"<|reserved_special_token_{i}|>" for i in range(2, 2 + num_reserved)]
    return [*_NAMED_SPECIAL_TOKENS, *reserved, IMAGE_TOKEN]


def default_ranks_file() -> Path:
    """Path of the Llama-3 BPE ranks file inside the installed `llama-models` package."""
    return Path(str(resources.files("llama_models") / "llama3" / "tokenizer.model"))


def read_bpe_ranks(path: str | Path) -> dict[bytes, int]:
    """Reads a tiktoken ranks file into `{token bytes: rank}`; the ranks must be exactly 0..N-1."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"BPE ranks file not found: {path}")
    ranks = {}
    for line_number, line in enumerate(path.read_text(encoding="ascii").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError:
            raise ValueError(f"{path}, line {line_number}: expected 'base64-token rank', got {line[:80]!r}") from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"{path}: ranks are not the consecutive integers 0..{len(ranks) - 1}")
    return ranks


def byte_alphabet() -> list[str]:
    """GPT-2's byte-to-unicode map: printable Latin-1 bytes stand for themselves, the other 68 for chr(256 + k)."""
    printable = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    alphabet, shifted = [], 0
    for byte in range(256):
        if byte in printable:
            alphabet.append(chr(byte))
        else:
            alphabet.append(chr(256 + shifted))
            shifted += 1
    return alphabet


@functools.lru_cache(maxsize=2)
def _vocab_and_merges(path: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level vocabulary and the complete, rank-ordered merge list for a ranks file (cached per file: building it takes a second or two)."""
    ranks = read_bpe_ranks(path)
    to_alphabet = str.maketrans(dict(enumerate(byte_alphabet())))
    # One alphabet character per byte, so string slices are byte slices.
    vocab = {token.decode("latin-1").translate(to_alphabet): rank for token, rank in ranks.items()}
    keyed = []
    for token, rank in vocab.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            left_rank, right_rank = vocab.get(left), vocab.get(right)
            if left_rank is not None and right_rank is not None:
                keyed.append((rank, left_rank, right_rank, left, right))
    keyed.sort()
    return vocab, [(left, right) for *_, left, right in keyed]


def build_tokenizer(ranks_file: str | Path | None = None) -> PreTrainedTokenizerFast:
    """The Llama-3.2-Vision Instruct tokenizer as a transformers fast tokenizer.

    Args:
      ranks_file: a tiktoken ranks file; default: the one in `llama-models` (the released Llama-3 vocabulary).

    Returns:
      A `PreTrainedTokenizerFast` with BOS `<|begin_of_text|>`, EOS `<|eot_id|>`, PAD `<|finetune_right_pad_id|>`, the
      Instruct chat template, no automatic special tokens and no clean-up of spaces when decoding (exact round trips).
    """
    path = Path(ranks_file) if ranks_file is not None else default_ranks_file()
    vocab, merges = _vocab_and_merges(path.resolve())
    if len(vocab) != NUM_BASE_TOKENS:
        raise ValueError(f"{path}: expected {NUM_BASE_TOKENS} base tokens for Llama 3, found {len(vocab)}")
    backend = Tokenizer(models.BPE(vocab, merges, ignore_merges=True))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    backend.add_special_tokens([AddedToken(token, normalized=False, special=True) for token in special_tokens()])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOT_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=MODEL_MAX_LENGTH,
        model_input_names=["input_ids", "attention_mask"],
        clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE,
    )
