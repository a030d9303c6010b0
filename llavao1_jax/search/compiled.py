"""`CompiledStageSearch`: the stage-level beam search of a batch of questions run as one jitted function
(stage_program.py), for the judges whose every decision can be taken on the device: `logprob`, and `self` with
either verdict. `lj.search` uses it for those configs (unless `one_jit=False`).

The object is built once per generator, processor and config (`lj.search` builds one per call and runs every
batch through it): it holds the static plan, which is the jit's cache key, so any object with the same model
structure and config reuses the compilation, and the stop-string tables. The host
tokenises the questions once before the call and detokenises every text once after it; the trace is assembled from
the returned arrays in the stepwise path's format.
"""
from __future__ import annotations

import jax
import numpy as np

from llavao1_jax.inference import Generator, SamplingConfig, bucket_length
from llavao1_jax.inference.generator import make_stopping, prompt_inputs
from llavao1_jax.search.batch import Batch
from llavao1_jax.search.candidates import Candidates
from llavao1_jax.search.config import SearchConfig
from llavao1_jax.search.methods import room
from llavao1_jax.search.packing import pack
from llavao1_jax.search.prompts import (CHECK_PARTS, CHECK_STRINGS, STAGES, VERDICT_STRINGS, Segments, encode,
                                        instruction, reminder)
from llavao1_jax.search.stage_program import REASONING, StagePlan, search_batch, stack_stoppings

TIMER = "jitted_search"


def runs_as_one_jit(config: SearchConfig, generator) -> bool:
    """Whether `lj.search` runs `config` on `generator` as one jitted function per batch."""
    return (config.one_jit and config.method == "stage" and config.judge in ("logprob", "self")
            and isinstance(generator, Generator))


class CompiledStageSearch:
    """The one-jit stage search for one generator, processor and config; `run(batch, inputs)` searches a batch."""

    def __init__(self, generator: Generator, processor, config: SearchConfig):
        segments = Segments.build(processor)
        ids = lambda array: tuple(int(i) for i in array)
        text = lambda s: ids(encode(processor, s))
        self.generator = generator
        self.plan = StagePlan(
            graphdef=generator.decoding_model.graphdef, n=config.n, judge=config.judge, verdict=config.verdict,
            sampling=SamplingConfig(do_sample=True, temperature=config.temperature, top_p=config.top_p),
            max_stage_tokens=config.max_stage_tokens, min_stage_tokens=config.min_stage_tokens,
            judge_max_tokens=config.judge_max_tokens, judge_min_tokens=config.judge_min_tokens,
            room=room(config, "stage"), image_token_id=generator.config.image_token_index,
            closing=tuple(text(f"</{stage}>") for stage in STAGES),
            instruction=tuple(text(instruction(stage)) for stage in STAGES),
            reminder=tuple(text(reminder(stage)) for stage in STAGES),
            check_parts=tuple(text(part) for part in CHECK_PARTS), head_image=ids(segments.head_image),
            head_text=ids(segments.head_text), tail=ids(segments.tail), question=ids(segments.question),
            hint=ids(segments.hint), first=ids(segments.first), second=ids(segments.second),
            verdict_prefix=ids(segments.verdict_prefix), verdict_ids=segments.verdict_ids)
        stopping = lambda stop_ids, strings, minimum: make_stopping(generator.config, stop_ids, strings,
                                                                     processor.tokenizer, minimum)
        self.stops = dict(stages=stack_stoppings([stopping((), (f"</{stage}>",), config.min_stage_tokens)
                                                  for stage in STAGES]),
                          verdicts=stopping(None, VERDICT_STRINGS, config.judge_min_tokens),
                          checks=stopping(None, CHECK_STRINGS, config.judge_min_tokens))

    def run(self, batch: Batch, inputs: dict) -> None:
        """Searches `batch` (prompts `inputs` from the processor) in one jitted call; fills `batch.chosen`,
        `batch.steps` and the totals as the stepwise path does."""
        plan, q = self.plan, batch.size
        width = bucket_length(max(len(t) for t in batch.question_tokens))
        questions, mask = (np.pad(a, ((0, 0), (0, width - a.shape[1]))) for a in pack([batch.question_tokens], q))
        # the tournament's starting orders, drawn as the stepwise path draws them
        draw = plan.judge == "self" and plan.n > 1
        orders = np.asarray([[batch.rng.permutation(plan.n) if draw else np.arange(plan.n) for _ in range(q)]
                             for _ in STAGES], np.int32)
        _, params, head = self.generator.decoding_model
        batch.totals.seconds = {TIMER: 0.0}
        with batch.totals.timed(TIMER):
            out = jax.device_get(search_batch(plan, params, head, prompt_inputs(self.generator.config, inputs),
                                              questions, mask, jax.random.PRNGKey(batch.config.seed), orders,
                                              self.stops))
        self._record(batch, out)

    def _record(self, batch: Batch, stacked: dict) -> None:
        q, n = batch.size, self.plan.n
        out = [jax.tree.map(lambda a: a[s], stacked) for s in range(len(STAGES))]
        judge_rows = [r["judge_tokens"][i, :r["judge_lengths"][i]] for o in out for r in o.get("rounds", ())
                      if "judge_tokens" in r for i in range(len(r["judge_lengths"]))]
        judge_texts = iter(batch.decode_texts(judge_rows))
        totals = batch.totals
        for s, (stage, o) in enumerate(zip(STAGES, out)):
            lengths = o["mask"].sum(axis=1)
            cands = Candidates(tokens=[row[:k] for row, k in zip(o["tokens"], lengths)],
                               logprobs=[row[:k] for row, k in zip(o["logprobs"], o["generated"])],
                               truncated=o["truncated"],
                               ended_by=[None if cut else f"</{stage}>" for cut in o["truncated"]],
                               finish=["length" if cut else "stop_string" for cut in o["truncated"]], state=None)
            totals.candidate_tokens += int(o["generated"].sum())
            judged = [{} for _ in range(q)]
            if "scores" in o:
                judged = [{"scores": [float(v) for v in row]} for row in o["scores"]]
            elif "rounds" in o:
                judged = self._tournament_record(batch, o, judge_texts, precheck=s == REASONING)
            winners = o["winners"]
            for i in range(q):
                batch.chosen[i].append(cands.tokens[i * n + winners[i]])
            batch.steps.append(dict(kind=stage, n=n, candidates=cands, winners=winners, judged=judged, active=None))
            if batch.on_step is not None:
                batch.on_step(stage)

    def _tournament_record(self, batch: Batch, o: dict, judge_texts, precheck: bool) -> list[dict]:
        """Per question: the comparisons in the order they ran, and the pre-check outcomes; counts the judge's
        calls, prefills, tokens and unread verdicts."""
        q, totals = batch.size, batch.totals
        correct = o["correct"] if precheck else None
        traces = [{"comparisons": [], "precheck": None if correct is None else correct[i].tolist()} for i in range(q)]
        totals.judge_prefill_calls += 1 + (correct is not None)
        if correct is not None:
            totals.judge_calls += correct.size
            totals.judge_tokens += int(o["check_lengths"].sum())
        for r in o["rounds"]:
            pairs = r["pairs"].shape[1]
            totals.judge_calls += q * pairs
            if "judge_tokens" in r:
                raw = [next(judge_texts) for _ in range(q * pairs)]
                totals.judge_tokens += int(r["judge_lengths"].sum())
                totals.unparsed_verdicts += int((~r["parsed"]).sum())
            else:
                raw = [[float(p1), float(p2)] for p1, p2 in r["probs"]]
            for i in range(q):
                for k in range(pairs):
                    a, b = (int(x) for x in r["pairs"][i, k])
                    traces[i]["comparisons"].append({"pair": [a, b], "winner": int(r["winners"][i, k]),
                                                     "by": "precheck" if r["by_precheck"][i, k] else "judge",
                                                     "verdict": raw[i * pairs + k]})
        return traces
