"""The synthetic reasoning set as a benchmark: a built TFDS split written as a TSV and read back (kind
`synthetic_reasoning`), the trainer's prompt, scoring by letter and by normalised exact match, format validity."""
import io

import numpy as np
import pytest
from PIL import Image

import llavao1_jax as lj
from llavao1_jax import evaluate as ev
from llavao1_jax.data import build, pipeline, records
from llavao1_jax.data import synthetic_reasoning as sr
from llavao1_jax.evaluate.runner import run
from llavao1_jax.evaluate.synthetic import write_synthetic_benchmark
from evaluate_files import eval_config, png_base64, write_tsv
from scripted_generator import ScriptedGenerator

SEED, SIZE = 3, 32
STAGES = ("SUMMARY", "CAPTION", "REASONING", "CONCLUSION")


@pytest.fixture(scope="module")
def processor():
    return lj.Processor.llama3_2_vision()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("synthetic")
    build.build_synthetic_reasoning(data_dir, num_train=2, num_test=12, seed=SEED, image_size=SIZE)
    return data_dir


def _problem_by_id(record_id):
    split, index = record_id.split("-")
    return sr.make_example(SEED, split, int(index), SIZE)


def test_written_split_reads_back_as_the_records(built, tmp_path):
    path = write_synthetic_benchmark(built, tmp_path / "synthetic_reasoning_test.tsv")
    bench = ev.read_benchmark(path)
    assert (bench.kind, bench.name, len(bench)) == ("synthetic_reasoning", "synthetic_reasoning_test", 12)
    kinds = set()
    for position, row in enumerate(bench):
        expected = _problem_by_id(row.fields["id"])
        assert row.index == position
        assert row.question == expected["conversations"][0]["value"]  # the human turn, options included
        assert (row.answer, row.category) == (expected["answer"], expected["question_type"])
        assert row.options == dict(zip("ABCD", expected["choices"]))  # {} for open questions
        assert np.array_equal(np.asarray(row.image()), np.asarray(Image.open(io.BytesIO(expected["image"]))))
        kinds.add(bool(row.options))
    assert kinds == {True, False}  # both choice and open questions among the twelve
    first = ev.read_benchmark(write_synthetic_benchmark(built, tmp_path / "synthetic_reasoning_4.tsv", limit=4))
    assert [row.fields["id"] for row in first] == [row.fields["id"] for row in bench.rows[:4]]


def test_prompt_is_the_trainers(built, processor, tmp_path):
    bench = ev.read_benchmark(write_synthetic_benchmark(built, tmp_path / "synthetic_reasoning_test.tsv"))
    for row in bench.rows[:3]:
        turns = ((records.HUMAN, _problem_by_id(row.fields["id"])["conversations"][0]["value"]),)
        trainer = processor.apply_chat_template(pipeline.to_messages(turns), add_generation_prompt=True)
        assert ev.chat_prompt(processor, row, bench.kind) == trainer
        assert ev.question_prompt(row, bench.kind) == row.question


def test_missing_dataset_or_split_is_a_clear_error(built, tmp_path):
    with pytest.raises(ValueError, match="no synthetic_reasoning split 'validation'"):
        write_synthetic_benchmark(built, tmp_path / "synthetic_reasoning_x.tsv", split="validation")
    with pytest.raises(ValueError, match="holds no built synthetic_reasoning dataset"):
        write_synthetic_benchmark(tmp_path / "empty", tmp_path / "synthetic_reasoning_x.tsv")
    assert not (tmp_path / "synthetic_reasoning_x.tsv").exists()


def _tagged(conclusion):
    return (f"<SUMMARY> s </SUMMARY>\n\n<CAPTION> c </CAPTION>\n\n<REASONING> r </REASONING>\n\n"
            f"<CONCLUSION> {conclusion} </CONCLUSION>")


ROWS = [  # (index, question_type, answer, options, output, right?)
        (0, "count_choice", "B", ("1", "2", "3", "4"), _tagged("B"), True),
        (1, "count_choice", "C", ("1", "2", "3", "4"), _tagged("The answer is 3"), True),  # by option text
        (2, "attribute_choice", "A", ("red", "blue"), _tagged("B"), False),
        (3, "count", "3", (), _tagged("3."), True),                 # a trailing period is dropped
        (4, "compare", "Yes", (), _tagged("  yes "), True),         # case and spaces
        (5, "compare", "No", (), _tagged("No, there are not"), False),  # exact match only
        (6, "arithmetic", "0", (), "0", True),                      # no tags: the whole text is the conclusion
        (7, "count", "2", (), _tagged("4"), False)]


def _synthetic_tsv(tmp_path):
    return write_tsv(tmp_path / "synthetic_reasoning_test.tsv", [
        dict(index=i, question=f"Question {i}?", answer=a, category=c, **dict(zip("ABCD", o)), id=f"test-{i}",
             image=png_base64((i, 2, 3))) for i, c, a, o, *_ in ROWS],
        header=["index", "question", "answer", "category", "A", "B", "C", "D", "id", "image"])


def test_scoring_letters_and_normalised_open_answers(tmp_path):
    report = ev.score(_synthetic_tsv(tmp_path), {i: out for i, *_, out, _ in ROWS}, workdir=tmp_path / "w")
    assert report["overall"] == pytest.approx(100 * 5 / 8)
    assert report["by_category"] == {"arithmetic": 100.0, "attribute_choice": 0.0, "compare": 50.0,
                                     "count": 50.0, "count_choice": 100.0}
    assert report["format_validity"] == pytest.approx(100 * 7 / 8)  # row 6 has no tags
    assert report["needs_judge"] == 0
    assert (tmp_path / "w" / "synthetic_reasoning_test_acc.csv").read_text().splitlines()[0] == \
        "split,Overall,arithmetic,attribute_choice,compare,count,count_choice"


def test_runner_with_a_prebuilt_generator(processor, tmp_path):
    # A scripted stand-in generator, passed through the runner to lj.search as the engine would be: each stage is
    # written tagged, the conclusion being the right answer for every second row and "wrong" for the others.
    answers = {f"Question {i}?": a for i, _, a, *_ in ROWS}

    def stage_text(stage, question):
        body = (answers[question] if int(question.split()[1][:-1]) % 2 == 0 else "wrong") \
            if stage == "CONCLUSION" else "text"
        return f"<{stage}> {body} </{stage}>"

    def writer(prompt, copy):
        stage = STAGES[sum(f"</{s}>" in prompt for s in STAGES[:3])]
        return stage_text(stage, next(q for q in answers if q in prompt))

    config = eval_config(benchmark=str(_synthetic_tsv(tmp_path)), batch_size=3)
    config.search.method, config.search.n, config.search.max_stage_tokens = "stage", 1, 16
    summary = run(config, tmp_path / "w", ScriptedGenerator(processor, writer), processor,
                  lj.SearchConfig.from_dict(config.search.to_dict()))
    assert (summary["kind"], summary["n"], summary["overall"]) == ("synthetic_reasoning", 8, 50.0)
    assert summary["format_validity"] == 100.0
    # One candidate per stage and no judge calls: the tokens generated are those of the four stage texts.
    written = [len(processor.tokenizer.encode(stage_text(stage, question), add_special_tokens=False))
               for question in answers for stage in STAGES]
    assert summary["tokens_per_question"] == pytest.approx(sum(written) / len(answers))
    assert summary["seconds_per_question"] > 0
