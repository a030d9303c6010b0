"""`Processor`: a user's images and text (or chat) -> Mllama's input arrays, as transformers' `MllamaProcessor`."""
import json
from pathlib import Path

import numpy as np
from jinja2 import TemplateError

from llavao1_jax.processor import tokenizer as llama_tokenizer
from llavao1_jax.processor.chat_template import check_conversation
from llavao1_jax.processor.image_processing import CLIP_MEAN, CLIP_STD, ImageProcessor, nest_images
from llavao1_jax.processor.masks import cross_attention_mask

_TOKENIZER_FILE = "tokenizer.json"
_TEMPLATE_JINJA = "chat_template.jinja"
_TEMPLATE_JSON = "chat_template.json"


def with_bos(prompt: str, bos_token: str, image_token: str) -> str:
    """Adds BOS to a prompt that has none, after its leading `<|image|>` tokens (as transformers' processor does)."""
    if bos_token in prompt:
        return prompt
    rest = prompt
    while rest.startswith(image_token):
        rest = rest[len(image_token):]
    return prompt[: len(prompt) - len(rest)] + bos_token + rest


class Processor:
    """Tokenizer + chat template + image preprocessing for Llama-3.2-Vision / LLaVA-CoT.

    Build it with `Processor.llama3_2_vision(...)` (offline, from the packaged tokenizer) or
    `Processor.from_pretrained(directory)` (a transformers-format directory, e.g. the released checkpoint's).

    Attributes:
      tokenizer: the transformers `PreTrainedTokenizerFast` (no automatic BOS; the processor/template write it).
      image_processor: the `ImageProcessor` (tile size, max tiles, mean/std).
      image_token, image_token_id: `<|image|>`, 128256.
      bos_token_id, eos_token_id, pad_token_id: 128000, 128009 (`<|eot_id|>`), 128004 (`<|finetune_right_pad_id|>`).
      end_of_text_token_id, eom_token_id, eot_token_id, python_tag_token_id: 128001, 128008, 128009, 128010.
      start_header_token_id, end_header_token_id: 128006, 128007.
      stop_token_ids: tokens that end a generation: `<|end_of_text|>`, `<|eom_id|>`, `<|eot_id|>`.
    """

    def __init__(
        self, tokenizer: llama_tokenizer.PreTrainedTokenizerFast, image_processor: ImageProcessor, chat_template: str | None = None
    ):
        """Wraps a tokenizer and an image processor; `chat_template` (if given) replaces the tokenizer's template."""
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        if chat_template is not None:
            tokenizer.chat_template = chat_template
        self.image_token = llama_tokenizer.IMAGE_TOKEN
        self.image_token_id = self._token_id(llama_tokenizer.IMAGE_TOKEN)
        self.bos_token_id = self._token_id(llama_tokenizer.BOS_TOKEN)
        self.end_of_text_token_id = self._token_id(llama_tokenizer.END_OF_TEXT_TOKEN)
        self.eom_token_id = self._token_id(llama_tokenizer.EOM_TOKEN)
        self.eot_token_id = self._token_id(llama_tokenizer.EOT_TOKEN)
        self.python_tag_token_id = self._token_id(llama_tokenizer.PYTHON_TAG_TOKEN)
        self.start_header_token_id = self._token_id(llama_tokenizer.START_HEADER_TOKEN)
        self.end_header_token_id = self._token_id(llama_tokenizer.END_HEADER_TOKEN)
        self.eos_token_id = tokenizer.eos_token_id
        self.pad_token_id = tokenizer.pad_token_id
        self.stop_token_ids = (self.end_of_text_token_id, self.eom_token_id, self.eot_token_id)

    def _token_id(self, token: str) -> int:
        """Id of a special token the processor relies on; ValueError if the tokenizer lacks it."""
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if token_id is None or self.tokenizer.convert_ids_to_tokens(token_id) != token:
            raise ValueError(f"the tokenizer has no {token} token; it is not a Llama-3.2-Vision tokenizer")
        return token_id

    @property
    def chat_template(self) -> str | None:
        """The Jinja chat template (shared with the tokenizer)."""
        return self.tokenizer.chat_template

    # ------------------------------------------------------------------------------------------------ building
    @classmethod
    def llama3_2_vision(
        cls,
        tile_size: int = 560,
        max_image_tiles: int = 4,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    ) -> "Processor":
        """The Llama-3.2-11B-Vision-Instruct processor, built offline from the tokenizer shipped in `llama-models`.

        The defaults are the released preprocessing (560 px tiles, at most 4, CLIP mean/std, bilinear); give e.g.
        `tile_size=28, max_image_tiles=4` for tiny test models. The first build in a process takes a few seconds.
        """
        image_processor = ImageProcessor(
            tile_size=tile_size, max_image_tiles=max_image_tiles, image_mean=image_mean, image_std=image_std
        )
        return cls(llama_tokenizer.build_tokenizer(), image_processor)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "Processor":
        """Loads a transformers-format processor directory (tokenizer.json, tokenizer_config.json,
        preprocessor_config.json, and the chat template from chat_template.jinja/.json or tokenizer_config.json).

        Raises:
          FileNotFoundError: the directory or one of its required files is missing.
          ValueError: a file is unreadable or describes an unsupported processor.
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"processor directory not found: {directory}")
        if not (directory / _TOKENIZER_FILE).is_file():
            raise FileNotFoundError(f"{directory / _TOKENIZER_FILE} not found (a fast tokenizer file is required)")
        image_processor = ImageProcessor.from_pretrained(directory)
        try:
            tokenizer = llama_tokenizer.PreTrainedTokenizerFast.from_pretrained(str(directory), local_files_only=True)
        except Exception as error:  # transformers raises many types here; all mean "this tokenizer is unusable"
            raise ValueError(f"cannot load the tokenizer in {directory}: {type(error).__name__}: {error}") from None
        return cls(tokenizer, image_processor, chat_template=_read_chat_template(directory))

    def save_pretrained(self, directory: str | Path) -> Path:
        """Writes a complete transformers-format directory and returns it.

        The files (tokenizer.json, tokenizer_config.json with the chat template, special_tokens_map.json,
        chat_template.json, preprocessor_config.json) load with transformers' `MllamaProcessor`/`AutoProcessor` and
        with `Processor.from_pretrained`.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(str(directory), save_jinja_files=False)
        if self.chat_template is not None:
            text = json.dumps({"chat_template": self.chat_template}, indent=2, sort_keys=True) + "\n"
            (directory / _TEMPLATE_JSON).write_text(text, encoding="utf-8")
        self.image_processor.save_pretrained(directory)
        return directory

    # -------------------------------------------------------------------------------------------------- inputs
    def __call__(
        self,
        images=None,
        text: str | list[str] | None = None,
        *,
        padding: bool | str = False,
        padding_side: str | None = None,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        num_workers: int = 0,
        return_tensors: str | None = None,
    ) -> dict[str, np.ndarray]:
        """Model inputs for images and text, with transformers' `MllamaProcessor.__call__` keywords and results.

        Args:
          images: None, an image, a list of images (ONE sample), or one list of images per sample. Images are PIL
            images, uint8 arrays, file paths or encoded bytes.
          text: a prompt or a list of prompts with one `<|image|>` per image (e.g. from `apply_chat_template`). A prompt
            without `<|begin_of_text|>` gets it after its leading `<|image|>` tokens.
          padding, truncation, max_length, pad_to_multiple_of: as for the tokenizer (`padding=True`: to the longest).
          padding_side: "left" or "right" (default: the tokenizer's, "right").
          num_workers: threads for image preprocessing.
          return_tensors: None or "np"; the results are always numpy arrays.

        Returns:
          dict of numpy arrays: `input_ids`, `attention_mask` (int64 [B, S]) when text is given; `pixel_values`
          (float32 [B, I, max_tiles, 3, tile, tile]), `aspect_ratio_ids` (int64 [B, I]), `aspect_ratio_mask`
          (int64 [B, I, max_tiles]) when images are given; `cross_attention_mask` (int64 [B, S, I, max_tiles]) when
          both are.

        Raises:
          ValueError: text/image counts that disagree, a batch mixing samples with and without images, texts of unequal
            length without padding, unreadable images (FileNotFoundError for missing files).
        """
        if text is None and images is None:
            raise ValueError("give text, images or both")
        if return_tensors not in (None, "np"):
            raise ValueError(f"results are numpy arrays; return_tensors must be None or 'np', got {return_tensors!r}")
        if padding_side not in (None, "left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        texts = [text] if isinstance(text, str) else text
        if texts is not None and (not isinstance(texts, (list, tuple)) or not texts
                                  or not all(isinstance(t, str) for t in texts)):
            raise ValueError(f"text must be a string or a non-empty list of strings, got {type(text).__name__}")
        samples = None if images is None else nest_images(images)
        if texts is not None:
            self._check_image_counts(texts, samples)

        data = {}
        if texts is not None:
            prompts = [with_bos(t, self.tokenizer.bos_token, self.image_token) for t in texts]
            encoding = self.tokenizer(
                prompts,
                padding=padding,
                padding_side=padding_side,
                truncation=truncation,
                max_length=max_length,
                pad_to_multiple_of=pad_to_multiple_of,
            )
            lengths = {len(ids) for ids in encoding["input_ids"]}
            if len(lengths) > 1:
                raise ValueError(f"the prompts tokenise to different lengths {sorted(lengths)}; pass padding=True")
            data["input_ids"] = np.asarray(encoding["input_ids"], dtype=np.int64)
            data["attention_mask"] = np.asarray(encoding["attention_mask"], dtype=np.int64)
            if samples is not None:
                kept = (data["input_ids"] == self.image_token_id).sum(axis=1)
                for index, (count, sample) in enumerate(zip(kept, samples)):
                    if count != len(sample):
                        raise ValueError(f"sample {index}: truncation left {count} of {len(sample)} <|image|> tokens; "
                                         "increase max_length")
        if samples is not None:
            features = self.image_processor(samples, num_workers=num_workers)
            num_tiles = features.pop("num_tiles")
            data.update(features)
            if texts is not None:
                data["cross_attention_mask"] = self.cross_attention_mask(data["input_ids"], num_tiles)
        return data

    def _check_image_counts(self, texts: list[str], samples: list[list] | None) -> None:
        """Raises ValueError unless every prompt has exactly one `<|image|>` per image of its sample."""
        in_text = [t.count(self.image_token) for t in texts]
        if any(in_text) and not all(in_text):
            raise ValueError(f"<|image|> tokens per prompt: {in_text}; a batch cannot mix samples with and without "
                             "images")
        if samples is None:
            if any(in_text):
                raise ValueError(f"the prompts have {in_text} <|image|> tokens but no images were given")
            return
        given = [len(sample) for sample in samples]
        if given == in_text:
            return
        hint = ""
        if sum(given) == sum(in_text) and len(samples) != len(texts):
            hint = "; pass the images as one list per prompt, e.g. [[image_a], [image_b]]"
        elif not any(in_text):
            hint = "; put one <|image|> in the prompt where each image belongs"
        raise ValueError(f"<|image|> tokens per prompt {in_text} do not match images per sample {given}{hint}")

    def cross_attention_mask(
        self, input_ids: np.ndarray, num_tiles: list[list[int]], max_images: int | None = None
    ) -> np.ndarray:
        """int64 `[B, S, max_images, max_image_tiles]` mask from token ids and each image's tile count (see `masks`)."""
        return cross_attention_mask(
            input_ids, num_tiles, self.image_token_id, self.image_processor.max_image_tiles, max_images
        )

    # ------------------------------------------------------------------------------------------------ chat, text
    def apply_chat_template(
        self, conversation, *, add_generation_prompt: bool = False, tokenize: bool = False, **template_kwargs
    ):
        """Renders a conversation (or a list of conversations) with the chat template.

        Messages are `{"role": ..., "content": str | [{"type": "image"}, {"type": "text", "text": ...}]}`. Extra
        keywords reach the template (`date_string`, `tools`, ...).

        Returns:
          The prompt string (starting with `<|begin_of_text|>`), or with `tokenize=True` its token ids (no second BOS);
          a list of those for a list of conversations.
        """
        if self.chat_template is None:
            raise ValueError("this processor has no chat template")
        batched = isinstance(conversation, (list, tuple)) and bool(conversation) and isinstance(
            conversation[0], (list, tuple))
        conversations = conversation if batched else [conversation]
        results = []
        for index, messages in enumerate(conversations):
            check_conversation(messages, where=f"conversation {index}" if batched else "conversation")
            try:
                prompt = self.tokenizer.apply_chat_template(
                    list(messages), add_generation_prompt=add_generation_prompt, tokenize=False, **template_kwargs
                )
            except TemplateError as error:
                raise ValueError(f"chat template: {error}") from None
            results.append(self.tokenizer.encode(prompt, add_special_tokens=False) if tokenize else prompt)
        return results if batched else results[0]

    def decode(self, token_ids, skip_special_tokens: bool = False, **kwargs) -> str:
        """Text of a sequence of token ids (the tokenizer's `decode`)."""
        return self.tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens, **kwargs)

    def batch_decode(self, sequences, skip_special_tokens: bool = False, **kwargs) -> list[str]:
        """Texts of a batch of token id sequences (the tokenizer's `batch_decode`)."""
        return self.tokenizer.batch_decode(sequences, skip_special_tokens=skip_special_tokens, **kwargs)


def _read_chat_template(directory: Path) -> str | None:
    """The template saved in a directory: chat_template.jinja, else chat_template.json, else None (the tokenizer's)."""
    jinja = directory / _TEMPLATE_JINJA
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    legacy = directory / _TEMPLATE_JSON
    if not legacy.is_file():
        return None
    try:
        template = json.loads(legacy.read_text(encoding="utf-8"))["chat_template"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{legacy} is not a chat template file ({type(error).__name__}: {error})") from None
    if not isinstance(template, str):
        raise ValueError(f"{legacy}: only a single string template is supported")
    return template
