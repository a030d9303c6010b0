"""The question text of each benchmark as VLMEvalKit builds it (written out here by hand from its rules), the
LLaVA-CoT overrides, and the chat-template rendering with the image first."""
import pytest

import llavao1_jax as lj
from llavao1_jax import evaluate as ev
from evaluate_files import png_base64, write_tsv

IMAGE = png_base64((0, 0, 255))


def _mmbench(tmp_path, hint):
    return ev.read_benchmark(write_tsv(tmp_path / "MMBench_DEV_EN_V11.tsv", [
        dict(index=0, question="What is shown?", hint=hint, A="a cat", B="a dog", C="None", D="", answer="A",
             category="c", image=IMAGE, split="dev", **{"l2-category": "l2"})]))[0]


def test_multiple_choice_prompt_with_and_without_hint(tmp_path):
    assert ev.question_prompt(_mmbench(tmp_path, "It barks."), "mmbench") == (
        "Hint: It barks.\nQuestion: What is shown?\nOptions:\nA. a cat\nB. a dog\n"
        "Please select the correct answer from the options above. \n")
    assert ev.question_prompt(_mmbench(tmp_path, ""), "mmbench") == (
        "Question: What is shown?\nOptions:\nA. a cat\nB. a dog\n"
        "Please select the correct answer from the options above. \n")


def test_mmstar_numeric_options_print_as_pandas_reads_them(tmp_path):
    bench = ev.read_benchmark(write_tsv(tmp_path / "MMStar.tsv", [
        dict(index=0, question="How many?", answer="A", category="c", A="2", B="3", C="", image=IMAGE),
        dict(index=1, question="How many?", answer="A", category="c", A="4", B="5", C="6", image=IMAGE)]))
    # Column C holds a number and a missing cell: pandas reads it as floats, and VLMEvalKit prints them so; A and B
    # are integer columns.
    assert ev.question_prompt(bench[0], "mmstar") == (
        "Question: How many?\nOptions:\nA. 2\nB. 3\nPlease select the correct answer from the options above. \n")
    assert ev.question_prompt(bench[1], "mmstar") == (
        "Question: How many?\nOptions:\nA. 4\nB. 5\nC. 6.0\n"
        "Please select the correct answer from the options above. \n")


def test_ai2d_llava_cot_override_and_vlmevalkit_default(tmp_path):
    row = ev.read_benchmark(write_tsv(tmp_path / "AI2D_TEST.tsv", [
        dict(index=0, question="Which part is the root?", A="1", B="2", C="3", D="4", answer="C", category="parts",
             abcLabel="True", image=IMAGE)]), kind="ai2d")[0]
    assert ev.question_prompt(row, "ai2d") == (
        "Look at the scientific diagram carefully and answer the following question: Which part is the root?\n"
        "A. 1\nB. 2\nC. 3\nD. 4\nThink step by step and finally respond to the question with only the correct "
        "option number as \"FINAL ANSWER\".<cot_start>Let's think step by step.")
    assert ev.question_prompt(row, "ai2d", llava_cot=False) == (
        "Question: Which part is the root?\nOptions:\nA. 1\nB. 2\nC. 3\nD. 4\n"
        "Please select the correct answer from the options above. \n")


@pytest.mark.parametrize("kind", ["hallusionbench", "mathvista", "mmvet"])
def test_other_benchmarks_use_the_question_as_it_is(kind):
    row = ev.Row(index=0, question="Hint: x\nQuestion: Is it blue?", options={"A": "yes"}, answer="Yes",
                 category=None, l2_category=None, hint=None, split=None, fields={}, image_sources=())
    assert ev.question_prompt(row, kind) == "Hint: x\nQuestion: Is it blue?"


def test_chat_prompt_puts_the_image_first(tmp_path):
    processor = lj.Processor.llama3_2_vision()
    row = _mmbench(tmp_path, "")
    assert ev.chat_prompt(processor, row, "mmbench") == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<|image|>" + ev.question_prompt(row, "mmbench")
        + "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
