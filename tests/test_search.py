"""The searches on a tiny random model with the real tokenizer: every method and judge runs to completion on
questions with different images and prompt lengths, the stage search's structure (stage order, n - 1 comparisons,
the pre-check, truncation, prompts encoded once), the one-jit stage search against the stepwise one and its
compilation count, greedy equivalence with lj.generate, the CLI, bad input."""
import contextlib
import json
import math

import jax
import numpy as np
import PIL.Image
import pytest

import llavao1_jax as lj
from llavao1_jax import infer
from llavao1_jax.search.prompts import STAGES
from tiny_model import tiny_model_and_processor

SMALL = dict(max_stage_tokens=4, judge_max_tokens=3)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model, generator, processor = tiny_model_and_processor()
    root = tmp_path_factory.mktemp("search")
    rng = np.random.default_rng(0)
    paths = []
    for i, size in enumerate([(40, 60), (80, 30), (50, 50)]):
        paths.append(root / f"{i}.png")
        PIL.Image.fromarray((rng.random((*size, 3)) * 255).astype(np.uint8)).save(paths[-1])
    questions = [{"question": "How many squares are there?", "image": paths[0]},
                 {"question": "Which shape is the largest one, and what colour is it?", "image": paths[1]},
                 {"question": "Red?", "image": PIL.Image.open(paths[2])}]
    return generator, processor, questions, model, root


def test_stage_search_with_the_self_judge(setup):
    generator, processor, questions, _, _ = setup
    n = 3
    results = lj.search(generator, processor, questions, lj.SearchConfig(method="stage", n=n, **SMALL))
    assert len(results) == 3
    for r in results:
        trace = json.loads(json.dumps(r.trace))
        assert [step["kind"] for step in trace["steps"]] == list(STAGES)
        for step, stage in zip(trace["steps"], STAGES):
            assert len(step["candidates"]) == n
            assert len(step["comparisons"]) == n - 1                      # a knockout of n candidates
            assert step["comparisons"][-1]["winner"] == step["winner"]
            assert (step["precheck"] is not None) == (stage == "REASONING")
            for cand in step["candidates"]:                               # a random model never closes a stage
                assert cand["truncated"] and cand["text"].endswith(f"</{stage}>")
        closing = [r.text.index(f"</{stage}>") for stage in STAGES]
        assert closing == sorted(closing)
        totals = trace["totals"]
        # one batch: the vision tower and the question prompts ran once, the judge's constant head once a stage
        assert (totals["vision_calls"], totals["prefill_calls"], totals["judge_prefill_calls"]) == (1, 1, 5)
        assert totals["judge_calls"] == 3 * (len(STAGES) * (n - 1) + n)    # comparisons and pre-checks, 3 questions
        assert set(totals["breakdown"]) == {"jitted_search", "other"}       # the whole search was one call


@contextlib.contextmanager
def counting_traces(name: str):
    """Counts the times jax traces the jitted function `name` inside (its trace-duration events)."""
    count = [0]

    def listener(event, duration, **kwargs):
        count[0] += event == "/jax/core/compile/jaxpr_trace_duration" and kwargs.get("fun_name") == name

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield count
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def test_stage_search_with_logprob_scores_keeps_the_best_candidate(setup):
    """The highest-scoring candidate wins each stage. The search of a batch is one jitted function: traced once,
    and a second batch of the same shapes (other questions and images) neither retraces it nor compiles anything
    (the trace's compile clock counts every trace, lowering and compile); the same batch again, with the same
    seed, answers the same."""
    generator, processor, questions, _, _ = setup
    config = lj.SearchConfig(method="stage", n=2, judge="logprob", max_stage_tokens=5, judge_max_tokens=3)
    with counting_traces("search_batch") as first:
        results = lj.search(generator, processor, questions[:2], config)
    for step in results[0].trace["steps"]:
        assert step["winner"] == int(np.argmax(step["scores"]))
    assert results[0].trace["totals"]["judge_calls"] == 0
    assert first == [1] and results[0].trace["totals"]["compile_seconds"] > 0
    other = [{"question": "How many circles are there?", "image": questions[1]["image"]},
             {"question": "Which shape is the smallest one, and what colour is it?", "image": questions[2]["image"]}]
    with counting_traces("search_batch") as second:
        changed = lj.search(generator, processor, other, config)
    assert second == [0] and changed[0].trace["totals"]["compile_seconds"] == 0.0
    assert [r.text for r in changed] != [r.text for r in results]
    again = lj.search(generator, processor, questions[:2], config)
    assert [r.text for r in again] == [r.text for r in results]


def assert_same_record(got, want, path="trace"):
    """Equal nested records, floats to float32 rounding (the two paths lay out masked padding differently)."""
    if isinstance(want, float):
        assert math.isclose(got, want, rel_tol=1e-5, abs_tol=1e-6), path
    elif isinstance(want, dict):
        assert list(got) == list(want), path
        for key in want:
            assert_same_record(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, list):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same_record(g, w, f"{path}[{i}]")
    else:
        assert got == want, path


@pytest.mark.parametrize("judge, verdict, n, text_only", [
    ("self", "generate", 3, False),
    pytest.param("self", "probability", 2, False, marks=pytest.mark.slow),
    pytest.param("logprob", "generate", 3, False, marks=pytest.mark.slow),
    pytest.param("self", "generate", 4, True, marks=pytest.mark.slow)])
def test_one_jit_search_is_the_stepwise_search(setup, judge, verdict, n, text_only):
    """With the same seed the one-jit search (the default) takes every decision the stepwise path
    (one_jit=False) takes: the same candidates and truncations, pre-checks, pairs, verdicts and winners, the same
    answers and counters; scores and probabilities agree to float rounding.

    At temperature 0.1: the random model's next-token distribution at the default 0.6 is nearly flat over the
    128,256 tokens, so the float rounding by which the two compiled paths differ (it depends on the CPU) moves a
    sampled token across its neighbour's boundary now and then (in 1 stage of 12 on an AMD EPYC). At 0.1 the
    candidates are still all different."""
    generator, processor, questions, _, _ = setup
    if text_only:
        questions = [{"question": "What is 2 + 3?"}, {"question": "Name a colour that is also a fruit."}]
    config = lj.SearchConfig(method="stage", n=n, judge=judge, verdict=verdict, temperature=0.1, **SMALL)
    one_jit = lj.search(generator, processor, questions, config)
    stepwise = lj.search(generator, processor, questions, config.replace(one_jit=False))
    for step in one_jit[0].trace["steps"]:  # sampling still draws a different candidate for every slot
        assert len({c["text"] for c in step["candidates"]}) == n
    counters = lambda r: {k: v for k, v in r.trace["totals"].items()
                          if k not in ("compile_seconds", "seconds", "breakdown")}
    for got, want in zip(one_jit, stepwise):
        assert got.text == want.text
        assert_same_record(got.trace["steps"], want.trace["steps"])
        assert counters(got) == counters(want)
    assert set(stepwise[0].trace["totals"]["breakdown"]) == {"candidate_decoding", "judge_prefill",
                                                              "judge_decoding", "other"}


def test_greedy_method_is_lj_generate(setup):
    generator, processor, questions, model, _ = setup
    config = lj.SearchConfig(method="greedy", **SMALL)
    result = lj.search(generator, processor, questions[:1], config)[0]
    prompt = processor.apply_chat_template([{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": questions[0]["question"]}]}], add_generation_prompt=True)
    batch = processor(images=[[PIL.Image.open(questions[0]["image"])]], text=[prompt], padding=True,
                      padding_side="left")
    want = lj.generate(model, batch, max_new_tokens=len(STAGES) * config.max_stage_tokens, processor=processor)
    assert result.text == want.texts[0]


def test_cli_prints_the_stages_or_json(setup, capsys):
    _, _, questions, model, root = setup
    lj.save_pretrained(model, root / "model")
    lines = [json.dumps({"question": q["question"], "image": f"{i}.png"}) for i, q in enumerate(questions)]
    (root / "q.jsonl").write_text("\n".join(lines))
    assert infer.main(["--model", str(root / "model"), "--questions", str(root / "q.jsonl"), "--search", "greedy",
                       "--max-stage-tokens", "4", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["question"] for row in rows] == [q["question"] for q in questions]
    assert infer.main(["--model", str(root / "model"), "--question", "Hi?", "--image", str(root / "0.png"),
                       "--search", "stage", "--n", "2", "--judge", "logprob", "--max-stage-tokens", "4"]) == 0
    printed = capsys.readouterr()
    assert "[SUMMARY]" in printed.out
    assert [line.split()[0] for line in printed.err.splitlines() if line.endswith("s]")] == [
        f"[{stage}" for stage in STAGES]                                   # progress per stage
    (root / "bad.jsonl").write_text('{"question": "a"}\nnot json\n')
    assert infer.main(["--model", str(root / "model"), "--questions", str(root / "bad.jsonl")]) == 2
    assert "bad.jsonl: line 2" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("method, judge, verdict", [
    ("sample", "self", "generate"), ("best_of_n", "self", "generate"), ("best_of_n", "logprob", "generate"),
    ("sentence", "self", "generate"), ("sentence", "logprob", "generate"), ("stage", "self", "probability"),
    ("stage", "reward", "generate"), ("swires", "logprob", "generate"), ("swires", "reward", "generate")])
def test_every_method_and_judge_completes(setup, method, judge, verdict):
    generator, processor, questions, _, _ = setup
    reward = lambda question, image, prefix, candidate: -abs(len(candidate) - 10)
    config = lj.SearchConfig(method=method, n=2, judge=judge, verdict=verdict, reward_fn=reward, max_sentences=2,
                             **SMALL)
    for batch in (questions[:1], questions):
        results = lj.search(generator, processor, batch, config)
        assert len(results) == len(batch)
        json.dumps([r.trace for r in results])
        assert all(r.trace["totals"]["vision_calls"] == 1 and r.trace["totals"]["prefill_calls"] == 1
                   for r in results)


@pytest.mark.slow
def test_sharded_search_matches_one_device(setup):
    """Under a (data 2, tensor 2) mesh of fake CPU devices the stage search (one jitted function) gives the
    one-device answers."""
    from llavao1_jax.sharding import make_mesh
    import jax

    generator, processor, questions, model, root = setup
    config = lj.SearchConfig(method="stage", n=2, judge="self", **SMALL)
    want = [r.text for r in lj.search(generator, processor, questions[:2], config)]
    lj.save_pretrained(model, root / "sharded")
    mesh = make_mesh(data=2, fsdp=1, tensor=2, devices=jax.devices()[:4])
    sharded = lj.load_pretrained(root / "sharded", mesh=mesh, scan_layers=False)
    with jax.set_mesh(mesh):
        got = [r.text for r in lj.search(sharded, processor, questions[:2], config)]
    assert got == want


def test_stacked_stage_stop_strings_end_each_stage_at_its_own_tag(setup):
    """The one-jit search's per-stage stop-string tables, stacked and padded to common sizes, match as each
    stage's own table does: a text ends at its stage's closing tag and at no other stage's."""
    from llavao1_jax.inference import stop_strings
    from llavao1_jax.inference.generator import make_stopping
    from llavao1_jax.search.stage_program import stack_stoppings

    generator, processor, _, _, _ = setup
    alone = [make_stopping(generator.config, (), (f"</{stage}>",), processor.tokenizer, 0) for stage in STAGES]
    stacked = stack_stoppings(alone)
    texts = [f"<{stage}> some text </{stage}>\n\n<NEXT> more" for stage in STAGES] + ["no tag at all"]
    ids = [processor.tokenizer.encode(t, add_special_tokens=False) for t in texts]
    tokens = np.zeros((len(ids), max(map(len, ids))), np.int32)
    for row, row_ids in zip(tokens, ids):
        row[:len(row_ids)] = row_ids
    lengths = np.asarray([len(i) for i in ids])
    for s, table in enumerate(alone):
        padded = jax.tree.map(lambda a: a[s], stacked).strings
        got = np.asarray(stop_strings.first_match(padded, tokens, lengths))
        assert got.tolist() == np.asarray(stop_strings.first_match(table.strings, tokens, lengths)).tolist()
        assert got.tolist() == [0 if row == s else -1 for row in range(len(texts))]


@pytest.mark.parametrize("questions, options, message", [
    ([{"question": " "}], {}, "question 0: needs a non-empty"),
    ([{"question": "a"}, {"question": "b", "image": "/no/such.png"}], {}, "question 1: unreadable image"),
    ([{"question": "a"}], dict(max_stage_tokens=10**6), "question 0: .* more than the model's"),
])
def test_bad_questions(setup, questions, options, message):
    generator, processor, _, _, _ = setup
    with pytest.raises(ValueError, match=message):
        lj.search(generator, processor, questions, lj.SearchConfig(method="stage", **options))


@pytest.mark.parametrize("options, message", [
    (dict(method="beam"), "unknown method"), (dict(judge="gpt"), "unknown judge"), (dict(n=0), "n must be"),
    (dict(judge="reward"), "reward_fn"), (dict(method="swires"), "swires"),
])
def test_bad_configs(options, message):
    with pytest.raises(ValueError, match=message):
        lj.SearchConfig(**options)
