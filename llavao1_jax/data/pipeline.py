"""The SFT input pipeline: records -> chat template -> tokens with assistant-only labels -> bucketed, padded numpy batches.

    source = host_source("synthetic_reasoning", "train", data_dir)            # this host's slice, random access
    batches = SFTIterator(sft_dataset(source, processor, batch_size=8, buckets=(256,), num_workers=2))
    for batch in batches: ...                                                  # state: batches.get_state()/set_state()

Built on Grain over `tfds.data_source` (ArrayRecord, no TensorFlow):

- each host reads only its own contiguous slice of the split (`host_source`, TFDS `even_splits`);
- the host's records are shuffled with `seed`, reshuffled every epoch (`num_epochs=None`: repeat forever);
- decoding, image preprocessing, tokenisation and batching run in `num_workers` Grain worker processes (0: in the
  calling thread), so the accelerator does not wait on them;
- the iterator state (a small JSON-able dict) restores an exact position: the batches after a restore are the batches an
  uninterrupted iterator yields.

A batch holds the model's inputs and `labels`, all numpy with static shapes (`B` = batch_size, `S` = the smallest bucket
that fits the longest sample of the batch, so a train step compiles at most once per bucket, `T` = max_image_tiles):

    input_ids            int32   [B, S]      right-padded with <|finetune_right_pad_id|>
    attention_mask       int32   [B, S]      1 on real tokens
    labels               int32   [B, S]      = input_ids on trained tokens, IGNORE_INDEX (-100) elsewhere
    pixel_values         float32 [B, 1, T, 3, tile, tile]
    aspect_ratio_ids     int32   [B, 1]
    aspect_ratio_mask    int32   [B, 1, T]
    cross_attention_mask int32   [B, S, 1, T]

Labels are aligned with input_ids, NOT shifted: the logits at position t predict labels[t + 1], so a loss takes
`logits[:, :-1]` against `labels[:, 1:]`. Trained tokens are the assistant turns' contents and their closing <|eot_id|>;
BOS, headers, user turns (the <|image|> token included) and padding are IGNORE_INDEX. A sample longer than the largest
bucket keeps its first `buckets[-1]` tokens; `SFTIterator.num_truncated` counts such samples.
"""
import dataclasses
import functools

import grain
import numpy as np
import tensorflow_datasets as tfds

from llavao1_jax.data import formats, records

IGNORE_INDEX = -100
DEFAULT_BUCKETS = (256, 512, 1024, 2048, 4096)


def host_source(name: str, split: str, data_dir, *, process_index: int | None = None, process_count: int | None = None):
    """A random-access `tfds.data_source` over this host's slice of `split` (default: `jax.process_index()` of
    `jax.process_count()`). The slices of all hosts are disjoint and cover the split; their sizes differ by at most 1."""
    if process_index is None or process_count is None:
        import jax
        process_index, process_count = jax.process_index(), jax.process_count()
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
    host_split = tfds.even_splits(split, n=process_count, drop_remainder=False)[process_index]
    return tfds.data_source(name, split=host_split, data_dir=data_dir)


def to_messages(turns, answer_format: str = "tagged", *, prompt_parts: tuple[str, ...] = ()) -> list[dict]:
    """Chat messages for (role, text) turns: the image first in the first user turn, answers rendered as
    `answer_format` (one of `formats.FORMATS`). `prompt_parts` (joining to the first turn's text) make that turn one
    text item per part, which `encode_conversation` tokenises one by one. `to_messages(turns[:1])` is the prompt of
    a sample."""
    messages = []
    for index, (role, text) in enumerate(turns):
        if role == records.HUMAN:
            content = [{"type": "text", "text": text}]
            if index == 0 and prompt_parts:
                if "".join(prompt_parts) != text:
                    raise ValueError("prompt_parts do not join to the first user turn's text")
                content = [{"type": "text", "text": part} for part in prompt_parts]
            if index == 0:
                content.insert(0, {"type": "image"})
            messages.append({"role": "user", "content": content})
        else:
            messages.append({"role": "assistant", "content": formats.convert_answer(text, answer_format)})
    return messages


def encode_conversation(processor, messages: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Render `messages` with the chat template and tokenise; returns (input_ids, labels) int32, labels unshifted.

    A message with several text items has each item tokenised on its own (as the search's judge builds its prompts
    from separately tokenised pieces); everything else is tokenised as one text.

    A token is trained (label = its id) when it starts inside an assistant turn's span: from right after the
    assistant header to the end of the turn's <|eot_id|>. Spans are found by rendering the conversation up to each turn.
    """
    def render(upto, generation_prompt=False):
        return processor.apply_chat_template(messages[:upto], add_generation_prompt=generation_prompt, tokenize=False)

    text = render(len(messages))
    pieces = _pieces(processor, messages)
    if "".join(pieces) != text:
        raise ValueError("the chat template changes the text items it renders; cannot tokenise them one by one")
    input_ids, token_starts = _tokenize_pieces(processor, pieces)
    labels = np.full_like(input_ids, IGNORE_INDEX)
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(index, generation_prompt=True)
        upto_turn = text if index + 1 == len(messages) else render(index + 1)
        if not (text.startswith(upto_turn) and upto_turn.startswith(prompt)):
            raise ValueError(f"chat template output is not incremental at message {index}; cannot locate the answer")
        trained = (token_starts >= len(prompt)) & (token_starts < len(upto_turn))
        labels[trained] = input_ids[trained]
    return input_ids, labels


_PIECE_MARK = "\x00"


def _pieces(processor, messages: list[dict]) -> list[str]:
    """The rendered conversation cut at the edges of every text item of the messages with more than one."""
    marked = []
    for message in messages:
        content = message["content"]
        texts = [part["text"] for part in content if part.get("type") == "text"] if isinstance(content, list) else []
        if len(texts) > 1:
            if any(_PIECE_MARK in t for t in texts):
                raise ValueError("a text item holds the character \\x00, which marks text-item edges")
            content = [dict(part, text=_PIECE_MARK + part["text"] + _PIECE_MARK) if part.get("type") == "text"
                       else part for part in content]
        marked.append(dict(message, content=content))
    return processor.apply_chat_template(marked, tokenize=False).split(_PIECE_MARK)


def _tokenize_pieces(processor, pieces: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of the pieces, each tokenised on its own, and each token's start offset in the joined text."""
    encoded = processor.tokenizer(pieces, add_special_tokens=False, return_offsets_mapping=True)
    ids, starts, offset = [], [], 0
    for piece, piece_ids, offsets in zip(pieces, encoded["input_ids"], encoded["offset_mapping"]):
        ids += piece_ids
        starts += [offset + start for start, _ in offsets]
        offset += len(piece)
    return np.asarray(ids, dtype=np.int32), np.asarray(starts, dtype=np.int64)


@dataclasses.dataclass(frozen=True)
class EncodeSample:
    """Turns one data-source record into per-sample arrays (runs in the Grain workers)."""

    processor: object
    answer_format: str
    max_length: int

    def __call__(self, record: dict) -> dict:
        sample = records.to_sample(record)
        try:
            image = self.processor.image_processor.preprocess(sample.image)
            messages = to_messages(sample.turns, self.answer_format, prompt_parts=sample.prompt_parts)
            input_ids, labels = encode_conversation(self.processor, messages)
        except ValueError as e:  # unreadable image, broken answer tags (formats.StageError), template problems
            raise ValueError(f"record {sample.id!r}: {e}") from e
        truncated = len(input_ids) > self.max_length
        return {"input_ids": input_ids[:self.max_length], "labels": labels[:self.max_length], "image": image,
                "truncated": truncated}


def collate(samples: list[dict], *, processor, buckets: tuple[int, ...]) -> dict:
    """Pad samples from `EncodeSample` to the smallest bucket that fits the longest and build the batch (see module doc).

    Also returns `truncated` bool [B] (which samples were cut), which `SFTIterator` takes out and counts.
    """
    longest = max(len(s["input_ids"]) for s in samples)
    length = next(b for b in buckets if b >= longest)
    input_ids = np.full((len(samples), length), processor.pad_token_id, dtype=np.int32)
    labels = np.full((len(samples), length), IGNORE_INDEX, dtype=np.int32)
    attention_mask = np.zeros((len(samples), length), dtype=np.int32)
    for row, sample in enumerate(samples):
        n = len(sample["input_ids"])
        input_ids[row, :n], labels[row, :n], attention_mask[row, :n] = sample["input_ids"], sample["labels"], 1
    images = processor.image_processor.pack([[s["image"]] for s in samples], max_images=1)
    cross = processor.cross_attention_mask(input_ids, images["num_tiles"], max_images=1)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "pixel_values": images["pixel_values"],
        "aspect_ratio_ids": images["aspect_ratio_ids"].astype(np.int32),
        "aspect_ratio_mask": images["aspect_ratio_mask"].astype(np.int32),
        "cross_attention_mask": cross.astype(np.int32),
        "truncated": np.asarray([s["truncated"] for s in samples]),
    }


def sft_dataset(source, processor, *, batch_size: int, buckets=DEFAULT_BUCKETS, answer_format: str = "tagged",
                seed: int = 0, shuffle: bool = True, num_epochs: int | None = None, num_workers: int = 0,
                worker_buffer_size: int = 2) -> grain.IterDataset:
    """The Grain dataset of SFT batches over `source` (a random-access source such as `host_source(...)`).

    Args:
      source: records with `image` bytes and `conversations` (both builders of this package).
      processor: a `llavao1_jax.processor.Processor` (tokenizer, chat template, image preprocessing).
      batch_size: samples per batch on this host; the last incomplete batch is dropped.
      buckets: ascending sequence lengths a batch is padded to; longer samples are truncated to the last.
      answer_format: "tagged" (four stages), "untagged" or "direct" (see `formats`).
      seed: shuffling seed (each epoch gets its own order).
      shuffle: False keeps the source order (evaluation).
      num_epochs: epochs to read; None repeats forever.
      num_workers: worker processes for decoding, preprocessing, tokenising and batching (0: in the calling thread);
        needs the program's absl flags parsed (`absl.app.run`).
      worker_buffer_size: batches each worker prepares ahead.
    """
    buckets = tuple(int(b) for b in buckets)
    if not buckets or any(b <= 0 for b in buckets) or list(buckets) != sorted(set(buckets)):
        raise ValueError(f"buckets must be increasing positive lengths, got {buckets}")
    if answer_format not in formats.FORMATS:
        raise ValueError(f"unknown answer format {answer_format!r}; expected one of {formats.FORMATS}")
    if len(source) < batch_size:
        raise ValueError(f"the source has {len(source)} records, fewer than one batch of {batch_size}")
    dataset = grain.MapDataset.source(source)
    if shuffle:
        dataset = dataset.shuffle(seed=seed)
    dataset = dataset.repeat(num_epochs)
    dataset = dataset.map(EncodeSample(processor, answer_format, buckets[-1]))
    dataset = dataset.batch(batch_size, drop_remainder=True,
                            batch_fn=functools.partial(collate, processor=processor, buckets=buckets))
    iterable = dataset.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=worker_buffer_size))
    if num_workers:
        _check_absl_flags_parsed()
        iterable = iterable.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers,
                                                                     per_worker_buffer_size=worker_buffer_size))
    return iterable


def _check_absl_flags_parsed() -> None:
    """Grain's worker processes read Grain's absl flags, which raises unless the program parsed its flags
    (google/grain#1355). The program owns its flags, so this only checks and says how to fix it."""
    from absl import flags
    if not flags.FLAGS.is_parsed():
        raise ValueError("num_workers > 0 needs absl flags parsed (Grain's worker processes read them): start the "
                         "program with absl.app.run(main), or call absl.flags.FLAGS.mark_as_parsed() once at start-up "
                         "to use the flags' defaults")


class SFTIterator:
    """Iterates the batches of an `sft_dataset`, counts truncated samples, and saves/restores its exact position."""

    def __init__(self, dataset: grain.IterDataset):
        self._iterator = iter(dataset)
        self.num_samples = 0
        self.num_truncated = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batch = dict(next(self._iterator))
        truncated = batch.pop("truncated")
        self.num_samples += len(truncated)
        self.num_truncated += int(truncated.sum())
        return batch

    def get_state(self) -> dict:
        """The position (JSON-serialisable): restoring it with `set_state` resumes right after the last batch read."""
        return {"grain": self._iterator.get_state(), "num_samples": self.num_samples,
                "num_truncated": self.num_truncated}

    def set_state(self, state: dict) -> None:
        """Continue from a state returned by `get_state` (of an iterator over the same dataset and settings)."""
        self._iterator.set_state(state["grain"])
        self.num_samples, self.num_truncated = state["num_samples"], state["num_truncated"]

    def close(self) -> None:
        """Stop the worker processes (if any)."""
        close = getattr(self._iterator, "close", None)
        if close is not None:
            close()
