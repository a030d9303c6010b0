"""The four-stage answer format of LLaVA-CoT and the two ablation renderings of the same answer.

An answer in the tagged format (docs/answer_format.md) is

    <SUMMARY> ... </SUMMARY>

    <CAPTION> ... </CAPTION>

    <REASONING> ... </REASONING>

    <CONCLUSION> ... </CONCLUSION>

`parse_stages` checks the tags (each present once, in this order) and `render_answer` writes an answer back as one of
`FORMATS`: the four tagged stages, the same text without tags ("untagged", the paper's "without tags" ablation), or only the
conclusion ("direct", the paper's "direct training").
"""
import dataclasses
import re

from llavao1_jax.search.prompts import VERDICT_STRINGS

STAGE_NAMES = ("SUMMARY", "CAPTION", "REASONING", "CONCLUSION")
FORMATS = ("tagged", "untagged", "direct")
_TAGS = tuple(tag for name in STAGE_NAMES for tag in (f"<{name}>", f"</{name}>"))
_TAG_RE = re.compile("|".join(re.escape(tag) for tag in _TAGS))


class ReasonedError(ValueError):
    """A bad input with `reason`, a short stable key to count by, and a human-readable `detail`."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class StageError(ReasonedError):
    """An answer whose stage tags are missing, repeated or out of order."""


@dataclasses.dataclass(frozen=True)
class Stages:
    """The text inside each of the four stage tags (whitespace around it stripped)."""

    summary: str
    caption: str
    reasoning: str
    conclusion: str

    def texts(self) -> tuple[str, str, str, str]:
        """The four stage texts in order."""
        return (self.summary, self.caption, self.reasoning, self.conclusion)


def parse_stages(answer: str) -> Stages:
    """Split a tagged answer into its four stages.

    Raises `StageError` with reason "missing_tags" (some tag absent), "repeated_tags" (a tag more than once) or
    "tags_out_of_order". Text outside the tags is ignored.
    """
    found = [m.group(0) for m in _TAG_RE.finditer(answer)]
    missing = [tag for tag in _TAGS if tag not in found]
    if missing:
        raise StageError("missing_tags", "missing " + " ".join(missing))
    repeated = sorted({tag for tag in found if found.count(tag) > 1})
    if repeated:
        raise StageError("repeated_tags", "repeated " + " ".join(repeated))
    if tuple(found) != _TAGS:
        raise StageError("tags_out_of_order", "found " + " ".join(found))
    texts = []
    for name in STAGE_NAMES:
        start = answer.index(f"<{name}>") + len(name) + 2
        texts.append(answer[start:answer.index(f"</{name}>")].strip())
    return Stages(*texts)


def tagged_pieces(stages: Stages) -> tuple[str, str, str, str]:
    """The tagged answer cut after each stage's closing tag and the blank line after it: the text each stage of a
    stage-level search generates (the pieces join to `render_answer(stages, "tagged")`)."""
    tagged = [f"<{name}> {text} </{name}>" for name, text in zip(STAGE_NAMES, stages.texts())]
    return tuple(piece + "\n\n" for piece in tagged[:-1]) + (tagged[-1],)


def render_answer(stages: Stages, fmt: str = "tagged") -> str:
    """Write `stages` as one of `FORMATS` (stages separated by a blank line; tags with a space inside, as in the data)."""
    if fmt == "tagged":
        return "".join(tagged_pieces(stages))
    if fmt == "untagged":
        return "\n\n".join(stages.texts())
    if fmt == "direct":
        return stages.conclusion
    raise ValueError(f"unknown answer format {fmt!r}; expected one of {FORMATS}")


def is_judge_reply(answer: str) -> bool:
    """Whether `answer` is a self-judge's verdict rather than a staged answer: it ends in "I choose response 1." or
    "I choose response 2."."""
    return any(answer.endswith(verdict + ".") for verdict in VERDICT_STRINGS)


def convert_answer(answer: str, fmt: str) -> str:
    """Re-render a tagged answer as `fmt`; "tagged" returns `answer` unchanged (original spacing kept), and so does
    every format for a judge's reply (`is_judge_reply`)."""
    if fmt == "tagged" or is_judge_reply(answer):
        return answer
    return render_answer(parse_stages(answer), fmt)
