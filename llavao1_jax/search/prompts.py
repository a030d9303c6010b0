"""The judge's prompts: a rubric per step kind, the pairwise layout, and the reasoning pre-check (our wording of the
paper's protocol). `JudgePrompts` holds them as token segments, tokenised once per processor."""
from __future__ import annotations

import dataclasses

import numpy as np

STAGES = ("SUMMARY", "CAPTION", "REASONING", "CONCLUSION")

RUBRICS = {
    "SUMMARY": "The better summary outlines the approach the answer will take to the problem, without carrying out "
               "the analysis or writing formulas.",
    "CAPTION": "The better caption describes the parts of the image that matter for the question more thoroughly "
               "and more accurately, with fewer mistakes, and gives specific details rather than general remarks.",
    "REASONING": "The better reasoning explains how the answer is reached more clearly and with fewer mistakes: it "
                 "reviews the question, examines each possible answer, compares them and reaches a conclusion.",
    "CONCLUSION": "The better conclusion follows from the reasoning given in the hint and always gives an answer "
                  "instead of refusing to answer.",
    "ANSWER": "The better response answers the question correctly and more completely.",
    "SENTENCE": "The better response is the next sentence that moves the answer forward correctly and clearly.",
}
WHAT = {"SUMMARY": "a summary of how the problem will be approached",
        "CAPTION": "a description of the image",
        "REASONING": "the reasoning towards the answer",
        "CONCLUSION": "the final answer",
        "ANSWER": "a complete answer",
        "SENTENCE": "the next sentence of an answer"}

VERDICT_STRINGS = ("I choose response 1", "I choose response 2")
CHECK_STRINGS = ("incorrect", "correct")  # "incorrect" first: it contains "correct"


def instruction(kind: str) -> str:
    """The judge's opening text for step kind `kind` (a stage name, "ANSWER" or "SENTENCE")."""
    return (f"You are a fair judge comparing two responses to a question about this image. Each response is "
            f"{WHAT[kind]}. {RUBRICS[kind]}\n\n")


def reminder(kind: str) -> str:
    """The text after the two responses: the rubric again and the required form of the verdict."""
    return (f"\n\nRemember: {RUBRICS[kind]} Reply in exactly this form: Since [your reason], I choose response "
            f"[1 or 2].")


# The reasoning pre-check (text only: the chosen caption stands for the image), around caption, question, reasoning.
CHECK_PARTS = ("This description of an image can be trusted: ", "\nQuestion about the image: ", "\nReasoning: ",
               "\n\nCheck the reasoning and every calculation in it against the description. Reply with one word: "
               "correct or incorrect.")


def judge_parts(kind: str, question: str, first: str, second: str, hint: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The user-turn texts of one pairwise judge prompt, in the order `judges.compare` appends their tokens (after
    the image): each piece is tokenised on its own, so the pieces, not their concatenation, fix the token ids.
    `hint`: the chosen stages the judge is shown (see `methods.stage_hints`), one piece each."""
    parts = [instruction(kind), "Question: ", question]
    if hint:
        parts += ["\nHint about the question: ", *hint]
    return (*parts, "\nResponse 1: ", first, "\nResponse 2: ", second, reminder(kind))


@dataclasses.dataclass(frozen=True)
class Segments:
    """Token ids of the fixed pieces of the judge prompts, for one processor."""

    head_image: np.ndarray     # BOS, user header, <|image|>
    head_text: np.ndarray      # BOS, user header (text-only questions)
    tail: np.ndarray           # end of turn, assistant header
    question: np.ndarray       # "Question: "
    hint: np.ndarray           # "\nHint about the question: "
    first: np.ndarray          # "\nResponse 1: "
    second: np.ndarray         # "\nResponse 2: "
    verdict_prefix: np.ndarray  # "I choose response" up to the digit (verdict="probability")
    verdict_ids: tuple[int, int]  # the next token for response 1 and for response 2

    @classmethod
    def build(cls, processor) -> "Segments":
        """Renders the chat template around a marker and tokenises the pieces."""
        tokenize = lambda text: encode(processor, text)
        marker = "\x00"
        chat = lambda content: processor.apply_chat_template([{"role": "user", "content": content}],
                                                             add_generation_prompt=True)
        with_image = chat([{"type": "image"}, {"type": "text", "text": marker}]).split(marker)
        text_only = chat(marker).split(marker)
        one, two = (tokenize(s) for s in VERDICT_STRINGS)
        common = next(i for i, (a, b) in enumerate(zip(one, two)) if a != b)
        return cls(head_image=tokenize(with_image[0]), head_text=tokenize(text_only[0]), tail=tokenize(with_image[1]),
                   question=tokenize("Question: "), hint=tokenize("\nHint about the question: "),
                   first=tokenize("\nResponse 1: "), second=tokenize("\nResponse 2: "),
                   verdict_prefix=one[:common], verdict_ids=(int(one[common]), int(two[common])))


def encode(processor, text: str) -> np.ndarray:
    """Token ids of `text` (no special tokens added), int32."""
    return np.asarray(processor.tokenizer.encode(text, add_special_tokens=False), np.int32)
