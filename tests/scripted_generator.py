"""A stand-in for `lj.Generator` whose continuations a test scripts as text: `writer(prompt_text, copy)` returns
what a row writes, `copy` being the row's candidate index from the last `fork`. The searches drive it exactly as
they drive the engine (prefill, prefill_on_images, append_tokens, fork, select_rows, compact, reseed, decode), so
tests can check their logic against known texts and known verdicts."""
from __future__ import annotations

import dataclasses
import types

import numpy as np

from llavao1_jax.inference import GenerationResult
from llavao1_jax.search.prompts import VERDICT_STRINGS


@dataclasses.dataclass
class Rows:
    """The stand-in decode state: each row's token ids and candidate index, and next-token logits."""

    tokens: list
    copy: list
    logits: np.ndarray

    @property
    def batch_size(self) -> int:
        return len(self.tokens)


class ScriptedGenerator:
    def __init__(self, processor, writer, vocab_size: int = 128256):
        self.processor, self.writer, self.vocab_size = processor, writer, vocab_size
        self.config = types.SimpleNamespace(text=types.SimpleNamespace(max_position_embeddings=1 << 20))
        one, two = (processor.tokenizer.encode(s, add_special_tokens=False) for s in VERDICT_STRINGS)
        common = next(i for i, (a, b) in enumerate(zip(one, two)) if a != b)
        self.verdict_ids = (one[common], two[common])
        self.prefills = 0

    def _rows(self, tokens, copy) -> Rows:
        logits = np.zeros((len(tokens), self.vocab_size), np.float32)
        for r, row in enumerate(tokens):  # a judge prompt ending in "I choose response": the scripted preference
            text = self.text(row)
            if text.rstrip().endswith("I choose response"):
                verdict = self.writer(text, copy[r])
                logits[r, self.verdict_ids[0 if VERDICT_STRINGS[0] in verdict else 1]] = 1.0
        return Rows(tokens=[list(t) for t in tokens], copy=list(copy), logits=logits)

    def text(self, ids) -> str:
        return self.processor.tokenizer.decode(list(ids), skip_special_tokens=True)

    def prefill(self, batch, *, max_new_tokens, seed=0) -> Rows:
        self.prefills += 1
        ids, mask = np.asarray(batch["input_ids"]), batch.get("attention_mask")
        mask = np.ones(ids.shape, bool) if mask is None else np.asarray(mask).astype(bool)
        return self._rows([row[m] for row, m in zip(ids, mask)], [0] * len(ids))

    def prefill_on_images(self, images, tokens, mask=None, *, max_new_tokens, seed=0) -> Rows:
        mask = np.ones(np.shape(tokens), bool) if mask is None else np.asarray(mask).astype(bool)
        return self._rows([row[m] for row, m in zip(np.asarray(tokens), mask)], [0] * len(tokens))

    def append_tokens(self, state, tokens, mask=None) -> Rows:
        mask = np.ones(np.shape(tokens), bool) if mask is None else np.asarray(mask).astype(bool)
        return self._rows([old + list(row[m]) for old, row, m in zip(state.tokens, np.asarray(tokens), mask)],
                          state.copy)

    def fork(self, state, n) -> Rows:
        return self._rows([row for row in state.tokens for _ in range(n)], [c for _ in state.tokens for c in range(n)])

    def select_rows(self, state, rows, copies=1) -> Rows:
        return self._rows([state.tokens[r] for r in rows], [state.copy[r] for r in rows])

    def compact(self, state) -> Rows:
        return state

    def reseed(self, state, seed) -> Rows:
        return state    # its rows have no keys

    def decode(self, state, *, max_new_tokens, min_new_tokens=0, stop_token_ids=None, stop_strings=(),
               processor=None, do_sample=False, temperature=1.0, top_p=1.0, top_k=0):
        outs, ends = [], []
        for row, copy in zip(state.tokens, state.copy):
            ids = self.processor.tokenizer.encode(self.writer(self.text(row), copy), add_special_tokens=False)
            end, by = min(len(ids), max_new_tokens), None
            for k in range(1, end + 1):   # the first token after which a stop string is in the text
                hit = [s for s in stop_strings if s in self.text(ids[:k])]
                if hit:
                    end, by = k, hit[0]
                    break
            outs.append(ids[:end])
            ends.append(by)
        width = max(max_new_tokens, 1)
        tokens = np.zeros((len(outs), width), np.int32)
        for r, ids in enumerate(outs):
            tokens[r, :len(ids)] = ids
        lengths = np.asarray([len(ids) for ids in outs], np.int32)
        result = GenerationResult(tokens=tokens, lengths=lengths,
                                  finish_reason=["stop_string" if by else "length" for by in ends],
                                  logprobs=np.where(np.arange(width) < lengths[:, None], -1.0, 0.0).astype(np.float32),
                                  stop_string=ends, texts=[self.text(ids) for ids in outs])
        return result, self._rows([old + ids for old, ids in zip(state.tokens, outs)], state.copy)
