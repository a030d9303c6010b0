"""Answer extraction as VLMEvalKit's rule-based ("exact_matching") path does it: the option letter (`can_infer`,
with the paper-era rules "p24" or today's "head"), yes/no (`YOrN_Extraction`), and the `<CONCLUSION>` body; plus the
answer-format check and the open-answer normalisation of our synthetic set."""
from __future__ import annotations

import re

from llavao1_jax.data.formats import StageError, parse_stages

RULES = ("p24", "head")
_REFUSALS = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
             "I'm sorry, but without the image provided", "Cannot determine the answer")
_OPTION_SEPARATORS = ".()[],:;!*#{}"
_ANSWER_IS = re.compile(r"(?:correct\s+)?answer\s+is\s+\**([ABCD])\**", re.IGNORECASE)


def _check_rules(rules: str):
    if rules not in RULES:
        raise ValueError(f"unknown can_infer rules {rules!r}; expected one of {RULES}")


def can_infer_option(answer: str, choices: dict[str, str], rules: str = "p24") -> str | None:
    """The option letter named in `answer` by letter (VLMEvalKit's `can_infer_option`), "Z" for a refusal, else None."""
    _check_rules(rules)
    if "Failed to obtain answer via API" in answer:
        return None
    if any(refusal in answer for refusal in _REFUSALS):
        return "Z"
    separated = answer
    for char in _OPTION_SEPARATORS:
        separated = separated.replace(char, " ")
    tokens = separated.split()
    named = [letter for letter in choices if letter in tokens]
    if len(named) == 1:
        # HEAD also wants the letter's first occurrence among the last four tokens.
        if rules == "p24" or tokens.index(named[0]) > len(tokens) - 5:
            return named[0]
    elif not named and "Z" in tokens:
        return "Z"
    if rules == "head":
        match = _ANSWER_IS.search(answer)
        if match and match.group(1).upper() in choices:
            return match.group(1).upper()
    return None


def can_infer_text(answer: str, choices: dict[str, str], rules: str = "p24") -> str | None:
    """The letter of the only option whose text appears (case-insensitively) in `answer`, else None."""
    _check_rules(rules)
    # HEAD compares the lower-cased answer's length with the option texts' lengths as given.
    answer = answer.lower()
    if rules == "head" and len(answer) > 2 * sum(len(str(text)) for text in choices.values()):
        return None
    texts = {letter: str(text).lower() for letter, text in choices.items()}
    found = [letter for letter, text in texts.items() if text in answer]
    return found[0] if len(found) == 1 else None


def extract_option(prediction: str, options: dict[str, str], rules: str = "p24") -> str | None:
    """VLMEvalKit's `can_infer`: the option letter ("A".."Z") `prediction` gives, by letter or else by option text;
    None when nothing can be inferred (VLMEvalKit then scores "Z", i.e. wrong, without a judge)."""
    prediction = str(prediction)
    return can_infer_option(prediction, options, rules) or can_infer_text(prediction, options, rules)


_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
                "?", "!")
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")
# VLMEvalKit's pattern verbatim: "(?!<=\d)" is a (mistyped) lookahead, so this removes periods not followed by a digit.
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
# VLMEvalKit calls `_PERIOD.sub('', text, re.UNICODE)`, whose third argument is `count`: at most 32 periods go.
_PERIOD_COUNT = int(re.UNICODE)


def process_punctuation(text: str) -> str:
    """VLMEvalKit's punctuation pass: each character of `_PUNCTUATION` is deleted where the original text has it
    next to a space (or has a digit-comma-digit anywhere), else replaced by a space; then periods go."""
    out = text
    comma_between_digits = _COMMA_BETWEEN_DIGITS.search(text) is not None
    for char in _PUNCTUATION:
        out = out.replace(char, "" if (char + " " in text or " " + char in text or comma_between_digits) else " ")
    return _PERIOD.sub("", out, count=_PERIOD_COUNT)


def extract_yes_no(prediction: str) -> str:
    """VLMEvalKit's `YOrN_Extraction`: "Yes" or "No" when exactly one of the words appears, else "Unknown"."""
    words = process_punctuation(str(prediction).lower()).split()
    if "yes" in words and "no" not in words:
        return "Yes"
    if "no" in words and "yes" not in words:
        return "No"
    return "Unknown"


_CONCLUSION = re.compile(r"<CONCLUSION>(.*?)(?:</CONCLUSION>|$)", re.DOTALL)
_LAST_CLOSED_STAGE = re.compile(r".*</(?:SUMMARY|CAPTION|REASONING)>", re.DOTALL)


def conclusion(text: str) -> str:
    """The body of the last `<CONCLUSION>` in `text`, stripped (up to the end of the text when it is never closed).
    Without the tag, the text after the last closed stage tag, or else the whole text, stripped."""
    found = _CONCLUSION.findall(text)
    if found:
        return found[-1].strip()
    return _LAST_CLOSED_STAGE.sub("", text, count=1).strip()


def format_valid(text: str) -> bool:
    """Whether `text` holds the four stage tags <SUMMARY>, <CAPTION>, <REASONING>, <CONCLUSION>, each once, opened and
    closed, in that order (`llavao1_jax.data.formats.parse_stages`)."""
    try:
        parse_stages(text)
    except StageError:
        return False
    return True


def normalised_answer(text: str) -> str:
    """An open answer compared by exact match: lower-cased, whitespace collapsed, one trailing period dropped."""
    text = " ".join(str(text).lower().split())
    return text[:-1].rstrip() if text.endswith(".") else text
