"""The Llama-3.2-Vision Instruct chat template and the checks made on conversations before rendering it.

The template itself lives next to this file in `llama3_2_vision_instruct.jinja`; it is stored in the saved processor
(`tokenizer_config.json` and `chat_template.json`) so that transformers renders exactly the same prompt. Rendered
prompts start with `<|begin_of_text|>`; image prompts get no system block unless the conversation has a system
message; a text-only prompt gets Llama 3.1's system block, dated "26 Jul 2024" unless `date_string` is given.
"""
from collections.abc import Mapping, Sequence
from importlib import resources

CHAT_TEMPLATE = (resources.files(__package__) / "llama3_2_vision_instruct.jinja").read_text(encoding="utf-8").strip()

_PART_TYPES = ("image", "text")


def check_conversation(conversation, where: str = "conversation") -> None:
    """Raises ValueError naming the message at fault unless `conversation` is a non-empty list of chat messages.

    A message is a mapping with a string `role` and a `content` that is either a string or a list of parts
    `{"type": "image"}` / `{"type": "text", "text": str}`. A system message must have string content (the template trims
    it as text). Tool messages (`tool_calls`, roles `tool`/`ipython`) are passed through unchecked.
    """
    if isinstance(conversation, (str, bytes)) or not isinstance(conversation, Sequence) or not conversation:
        raise ValueError(f"{where}: expected a non-empty list of messages, got {type(conversation).__name__}")
    for index, message in enumerate(conversation):
        at = f"{where}, message {index}"
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise ValueError(f"{at}: expected a dict with a string 'role', got {message!r:.120}")
        if "tool_calls" in message or message["role"] in ("tool", "ipython"):
            continue
        content = message.get("content")
        if message["role"] == "system" and not isinstance(content, str):
            raise ValueError(f"{at}: a system message needs string content, got {type(content).__name__}")
        if isinstance(content, str):
            continue
        if isinstance(content, Mapping) or not isinstance(content, Sequence):
            raise ValueError(f"{at}: 'content' must be a string or a list of parts, got {type(content).__name__}")
        for part_index, part in enumerate(content):
            if not isinstance(part, Mapping) or part.get("type") not in _PART_TYPES:
                raise ValueError(f"{at}, part {part_index}: expected {{'type': 'image'|'text', ...}}, "
                                 f"got {part!r:.120}")
            if part["type"] == "text" and not isinstance(part.get("text"), str):
                raise ValueError(f"{at}, part {part_index}: a text part needs a string 'text'")
