"""The question text of each benchmark row as VLMEvalKit builds it (with the LLaVA-CoT model class's overrides for
AI2D and MathVista), and its rendering through the chat template with the image first."""
from __future__ import annotations

from llavao1_jax.evaluate.benchmarks import MC_KINDS, Row
_AI2D_11B = ("Look at the scientific diagram carefully and answer the following question: {question}\n"
             "Think step by step and finally respond to the question with only the correct option number as "
             "\"FINAL ANSWER\".<cot_start>Let's think step by step.")


def multiple_choice_prompt(row: Row) -> str:
    """VLMEvalKit's `ImageMCQDataset.build_prompt` text: hint, question, options, the instruction."""
    prompt = f"Hint: {row.hint}\n" if row.hint is not None else ""
    prompt += f"Question: {row.question}\n"
    if row.options:
        prompt += "Options:\n" + "".join(f"{k}. {v}\n" for k, v in row.options.items())
        prompt += "Please select the correct answer from the options above. \n"
    return prompt


def question_prompt(row: Row, kind: str, llava_cot: bool = True) -> str:
    """The text VLMEvalKit gives the model for `row` of a `kind` benchmark. With `llava_cot` (the paper's model
    class, 11B) AI2D is the question with its options appended, wrapped in the 11B instruction; MathVista (the
    bare question) reads as in VLMEvalKit's default."""
    if kind == "ai2d" and llava_cot:
        question = row.question + "".join(f"\n{k}. {v}" for k, v in row.options.items())
        return _AI2D_11B.format(question=question)
    if kind in MC_KINDS:
        return multiple_choice_prompt(row)
    return row.question


def chat_prompt(processor, row: Row, kind: str, llava_cot: bool = True) -> str:
    """The full prompt string: the user turn holds the image, then the question text; the assistant turn opens."""
    messages = [{"role": "user", "content": [{"type": "image"},
                                             {"type": "text", "text": question_prompt(row, kind, llava_cot)}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)
