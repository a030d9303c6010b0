"""`search`: answers for a list of questions by one of the search methods, batched over questions."""
from __future__ import annotations

import time
from typing import Callable, Optional, Sequence

import numpy as np

from llavao1_jax.inference import Generator
from llavao1_jax.model.mllama import Mllama
from llavao1_jax.processor.image_io import load_image
from llavao1_jax.search import methods
from llavao1_jax.search.batch import Batch
from llavao1_jax.search.compiled import CompiledStageSearch, runs_as_one_jit
from llavao1_jax.search.config import SearchConfig
from llavao1_jax.search.prompts import Segments, encode
from llavao1_jax.search.result import SearchResult


def search(model, processor, questions: Sequence[dict], config: SearchConfig = SearchConfig(), *,
           on_batch: Optional[Callable[[int, int], None]] = None,
           on_step: Optional[Callable[[str], None]] = None) -> list[SearchResult]:
    """Answers `questions` ([{"question": str, "image": PIL image | path | None}]) with `config.method`.

    Questions with and without an image run in separate batches of at most `config.batch_questions`. `model` is
    an `Mllama` (a `Generator` is built for the call) or a `Generator` to reuse (or any object with its methods). `on_batch(done, total)` is called
    after each batch and `on_step(kind)` after each step of a batch (progress). Raises ValueError naming the question for an empty question, an unreadable
    image, or budgets beyond the model's context.
    """
    images = [_image(i, q) for i, q in enumerate(_checked(questions))]
    generator = Generator(model) if isinstance(model, Mllama) else model
    segments = Segments.build(processor)
    results: list = [None] * len(questions)
    groups = [[i for i, image in enumerate(images) if (image is not None) == with_image] for with_image in (1, 0)]
    size = config.batch_questions or len(questions)
    rewards = config.reward_fn if isinstance(config.reward_fn, (list, tuple)) else None
    chunks = [group[start:start + size] for group in groups for start in range(0, len(group), size)]
    compiled = CompiledStageSearch(generator, processor, config) if runs_as_one_jit(config, generator) else None
    for number, indices in enumerate(chunks):
        reward_fn = rewards[number % len(rewards)] if rewards else config.reward_fn
        batch = Batch(generator=generator, processor=processor, config=config, segments=segments,
                      questions=[questions[i]["question"] for i in indices], images=[images[i] for i in indices],
                      question_tokens=[encode(processor, questions[i]["question"]) for i in indices], prefix=None,
                      rng=np.random.default_rng([config.seed, number]), reward_fn=reward_fn, on_step=on_step,
                      chosen=[[] for _ in indices])
        for i, result in zip(indices, _run(batch, first_index=indices[0], compiled=compiled)):
            results[i] = result
        if on_batch is not None:
            on_batch(sum(len(c) for c in chunks[:number + 1]), len(questions))
    return results


def _checked(questions) -> Sequence[dict]:
    if isinstance(questions, dict) or not isinstance(questions, Sequence) or not questions:
        raise ValueError("questions must be a non-empty list of {'question': str, 'image': ...} dicts")
    for i, q in enumerate(questions):
        if not isinstance(q, dict) or not isinstance(q.get("question"), str) or not q["question"].strip():
            raise ValueError(f"question {i}: needs a non-empty string 'question', got {q!r:.200}")
    return questions


def _image(index: int, question: dict):
    image = question.get("image")
    if image is None:
        return None
    try:
        return load_image(image)
    except (FileNotFoundError, ValueError) as error:
        raise ValueError(f"question {index}: unreadable image: {error}") from None


def _prompt_inputs(batch: Batch, first_index: int) -> dict:
    """The questions through the chat template (image first), left-padded; checks the budgets fit the context."""
    processor = batch.processor
    content = lambda q: ([{"type": "image"}] if batch.has_images else []) + [{"type": "text", "text": q}]
    prompts = [processor.apply_chat_template([{"role": "user", "content": content(q)}], add_generation_prompt=True)
               for q in batch.questions]
    inputs = processor(images=[[image] for image in batch.images] if batch.has_images else None, text=prompts,
                       padding=True, padding_side="left")
    limit = batch.generator.config.text.max_position_embeddings
    needed = inputs["input_ids"].shape[1] + methods.room(batch.config, batch.config.method)
    if needed > limit:
        lengths = inputs["attention_mask"].sum(axis=1)
        raise ValueError(f"question {first_index + int(lengths.argmax())}: the prompt ({int(lengths.max())} tokens) "
                         f"and the search's budgets need {needed} positions, more than the model's "
                         f"{limit}; lower max_stage_tokens")
    return inputs


def _run(batch: Batch, first_index: int, compiled: Optional[CompiledStageSearch]) -> list[SearchResult]:
    """Runs the configured method on one batch (as one jitted function when `compiled` is given) and assembles
    the results (texts decoded once, here)."""
    config = batch.config
    start = time.perf_counter()
    with batch.totals.counting_compiles():
        inputs = _prompt_inputs(batch, first_index)
        batch.totals.prefill_calls += 1
        batch.totals.vision_calls += int(batch.has_images)
        if config.method in ("greedy", "sample"):
            budget = len(methods.STAGES) * config.max_stage_tokens
            options = batch.sampling() if config.method == "sample" else dict(processor=batch.processor)
            with batch.totals.timed("candidate_decoding"):
                result = batch.generator.generate(inputs, max_new_tokens=budget, seed=config.seed, **options)
            batch.totals.candidate_tokens += int(result.lengths.sum())
            batch.chosen = [[row[:length]] for row, length in zip(result.tokens, result.lengths)]
        elif compiled is not None:
            compiled.run(batch, inputs)
        else:
            batch.prefix = batch.generator.prefill(inputs, max_new_tokens=methods.room(config, config.method),
                                                   seed=config.seed)
            methods.METHODS[config.method](batch)
    return _results(batch, time.perf_counter() - start)


def _results(batch: Batch, seconds: float) -> list[SearchResult]:
    config = batch.config
    totals = batch.totals.as_dict(seconds)
    answers = batch.decode_texts([np.concatenate(c) if c else np.zeros(0, np.int32) for c in batch.chosen])
    step_texts = [batch.decode_texts(step["candidates"].tokens) for step in batch.steps]
    out = []
    for q, text in enumerate(answers):
        steps = []
        for step, texts in zip(batch.steps, step_texts):
            if step["active"] is not None and not step["active"][q]:
                continue
            n, cands = step["n"], step["candidates"]
            rows = range(q * n, (q + 1) * n)
            steps.append({"kind": step["kind"], "winner": int(step["winners"][q]),
                          "candidates": [{"text": texts[r], "tokens": int(len(cands.tokens[r])),
                                          "truncated": bool(cands.truncated[r])} for r in rows],
                          **step["judged"][q]})
        trace = {"method": config.method, "n": config.n, "judge": config.judge, "verdict": config.verdict,
                 "steps": steps, "totals": totals}
        out.append(SearchResult.from_text(text, trace))
    return out
