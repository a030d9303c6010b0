"""Judge records of the synthetic set (judge_fraction): deterministic, verdicts name the correct stage in balanced
order, the pipeline trains only the verdict in every answer format, and the prompt is token for token the one the
search's self-judge builds."""
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds

import llavao1_jax as lj
from llavao1_jax.data import build, formats, judge_samples, pipeline, records, synthetic_reasoning as sr
from llavao1_jax.search.prompts import STAGES
from scripted_generator import ScriptedGenerator

NUM_TRAIN, NUM_TEST, JUDGES = 8, 3, 40
VERDICT = re.compile(r"^Since (.+), I choose response ([12])\.$")


@pytest.fixture(scope="module")
def processor():
    return lj.Processor.llama3_2_vision(tile_size=28, max_image_tiles=4)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tfds")
    counts = build.build_synthetic_reasoning(path, num_train=NUM_TRAIN, num_test=NUM_TEST, seed=2, image_size=56,
                                             judge_fraction=0.5)
    assert counts == {"train": NUM_TRAIN + NUM_TRAIN // 2, "test": NUM_TEST}
    return path


def _stage_piece(problem, stage: str) -> str:
    """The stage as the search's candidate holds it, written out here from the problem's fields."""
    text = {"SUMMARY": problem.summary, "CAPTION": problem.caption, "REASONING": " ".join(problem.reasoning),
            "CONCLUSION": problem.answer}[stage]
    return f"<{stage}> {text} </{stage}>" + ("" if stage == "CONCLUSION" else "\n\n")


def _responses(parts) -> tuple[str, str]:
    return parts[parts.index("\nResponse 1: ") + 1], parts[parts.index("\nResponse 2: ") + 1]


def _by_id(data_dir, split: str) -> dict:
    source = tfds.data_source("synthetic_reasoning", split=split, data_dir=data_dir)
    return {source[i]["id"].decode(): source[i] for i in range(len(source))}


def test_built_splits(data_dir):
    train, test = _by_id(data_dir, "train"), _by_id(data_dir, "test")
    assert [train[f"train-{i:07d}"]["task"].decode() for i in range(len(train))] == (
        ["answer"] * NUM_TRAIN + [f"judge_{s.lower()}" for s in STAGES])
    assert all(r["task"] == b"answer" and not len(r["prompt_parts"]) for r in test.values())
    for i in (0, NUM_TRAIN):  # questions unchanged by the option; judge records a pure function of their index
        expected = sr.make_example(2, "train", i, 56) if i < NUM_TRAIN else judge_samples.judge_example(
            2, i, NUM_TRAIN, 56)
        record = train[f"train-{i:07d}"]
        assert record["conversations"]["value"][1].decode() == expected["conversations"][1]["value"]
        assert [p.decode() for p in record["prompt_parts"]] == expected["prompt_parts"]
    assert judge_samples.judge_example(2, NUM_TRAIN + 1, NUM_TRAIN, 56) == judge_samples.judge_example(
        2, NUM_TRAIN + 1, NUM_TRAIN, 56)


def test_verdicts_name_the_correct_stage_in_balanced_order():
    picked = {stage: [] for stage in STAGES}
    for index in range(NUM_TRAIN, NUM_TRAIN + JUDGES):
        record = judge_samples.judge_example(5, index, NUM_TRAIN, 56)
        problem = sr.make_problem(5, "train", (index - NUM_TRAIN) % NUM_TRAIN)
        stage = record["task"].removeprefix("judge_").upper()
        parts, verdict = record["prompt_parts"], record["conversations"][1]["value"]
        assert record["conversations"][0]["value"] == "".join(parts) and problem.question in parts
        reason, k = VERDICT.match(verdict).groups()
        responses = _responses(parts)
        assert responses[int(k) - 1] == _stage_piece(problem, stage)
        wrong = responses[2 - int(k)]
        assert wrong != responses[int(k) - 1] and wrong.startswith(f"<{stage}> ")
        if stage == "CONCLUSION":
            assert f"not {wrong.split()[1]}" in reason
        picked[stage].append(int(k))
    assert {stage: sorted(ks) for stage, ks in picked.items()} == {s: [1] * 5 + [2] * 5 for s in STAGES}


@pytest.mark.parametrize("answer_format", formats.FORMATS)
def test_pipeline_trains_only_the_verdict(data_dir, processor, answer_format):
    encode = pipeline.EncodeSample(processor, answer_format, 1024)
    judges = [r for r in _by_id(data_dir, "train").values() if r["task"] != b"answer"]
    assert len(judges) == NUM_TRAIN // 2
    for record in judges:
        sample = encode(record)
        ids, labels = sample["input_ids"], sample["labels"]
        trained = labels != pipeline.IGNORE_INDEX
        verdict = records.to_sample(record).turns[1][1]
        assert processor.decode(ids[trained]) == verdict + "<|eot_id|>"
        assert not sample["truncated"] and (ids == processor.image_token_id).sum() == 1


class RecordingGenerator(ScriptedGenerator):
    """Keeps the token ids of every row it is asked to decode from."""

    def __init__(self, processor, writer):
        super().__init__(processor, writer)
        self.decoded = []

    def decode(self, state, **options):
        self.decoded += [np.asarray(row) for row in state.tokens]
        return super().decode(state, **options)


def test_judge_prompt_is_the_searchs(processor):
    problem = sr.make_problem(0, "train", 4)
    rng = np.random.default_rng(0)
    wrong = {stage: judge_samples.wrong_stage(problem, stage, rng) for stage in STAGES}
    correct = {stage: _stage_piece(problem, stage) for stage in STAGES}
    answer = "".join(correct.values())
    tokenize = lambda text: processor.tokenizer.encode(text, add_special_tokens=False)
    # What a model trained on the answers writes in each stage: the pieces tokenise as the whole answer does.
    assert sum((tokenize(correct[s]) for s in STAGES), []) == tokenize(answer)

    def writer(prompt: str, copy: int) -> str:
        if "Response 1: " in prompt:
            first = prompt.split("Response 1: ")[1].split("\nResponse 2: ")[0]
            return f"Since it is right, I choose response {1 if first in correct.values() else 2}."
        if "Reply with one word" in prompt:
            return "correct"
        stage = STAGES[sum(f"</{s}>" in prompt for s in STAGES)]
        if copy == 0:
            return correct[stage]
        wrong_stages = formats.Stages(*(wrong[s].text if s == stage else t
                                        for s, t in zip(STAGES, problem.stages().texts())))
        return formats.tagged_pieces(wrong_stages)[STAGES.index(stage)]

    generator = RecordingGenerator(processor, writer)
    image = sr.draw_scene(problem.objects, 56)
    config = lj.SearchConfig(method="stage", n=2, judge="self", max_stage_tokens=128, judge_max_tokens=32)
    (result,) = lj.search(generator, processor, [{"question": problem.question, "image": image}], config)
    assert result.text == answer
    judged = [row for row in generator.decoded if "Response 1: " in generator.text(row)]
    assert len(judged) == len(STAGES)
    for stage, row, step in zip(STAGES, judged, result.trace["steps"]):
        (comparison,) = step["comparisons"]
        parts, verdict = judge_samples.judge_turns(problem, wrong[stage], 1 if comparison["pair"][0] == 0 else 2)
        messages = pipeline.to_messages([(records.HUMAN, "".join(parts)), (records.GPT, verdict)],
                                        prompt_parts=parts)
        ids, labels = pipeline.encode_conversation(processor, messages)
        prompt = ids[:np.flatnonzero(labels != pipeline.IGNORE_INDEX)[0]]
        np.testing.assert_array_equal(prompt, row, err_msg=stage)
        assert comparison["winner"] == 0
