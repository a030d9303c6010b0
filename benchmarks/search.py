"""Stage-level beam search: llavao1_jax's batched, cache-forked search against the original algorithm restated on
transformers (every candidate and every judge call a separate `generate` from scratch at batch 1), same process.

The mid-size config with random weights (benchmarks/generate.py's), float32 on CPU, the real Llama-3.2-Vision
processor with 224-px tiles, one 4-tile image per question; --preset and --dtype pick another shape (on a GPU:
`--preset llama-3.2-11b-vision --dtype bfloat16 --skip-reference`, questions per minute at the 11B shapes). Both
sides do identical work: every stage candidate is exactly --stage-tokens tokens and every judge call (pairwise
verdicts and the reasoning pre-check) exactly --judge-tokens tokens (min = max), self-judge with generated
verdicts. Prints per-question seconds for each N and batch size (ours: the fastest of --repeats warm calls), the
ratio, our time breakdown, both sides' token counts (which must match), and the compile seconds of our first (cold)
call. The reference runs questions one after another, so its per-question time is measured on --reference-questions
questions.

Ours runs the whole search of a batch as one jitted function (`one_jit`, the default); --stepwise adds rows for the
stepwise path (a few jitted calls per stage, with its finer time breakdown). --compile-only runs one cold search
per N and batch size and prints only the compile seconds (no reference, no timed run). --profile runs one warm
search per N and batch size under jax.profiler and prints where it went: XLA op seconds by part of the search (the
named scopes of `search/stage_program.py`: candidates, the winners selected as the next prefix, the judge prompts'
shared part, the pairs, the reasoning pre-check; "prompts" is the questions' prefill), decoding or prefill, and
kind of op (the LM head's matmul, sampling, the rest). Ops on the two CPU threads may overlap, so op seconds can
add up to more than the wall time; loop and branch thunks, whose events span their bodies, are left out. With the
reference, the last line gives one float32 matmul's rate in XLA and in torch (`matmul_rate.py`): the ratio moves
with the CPU's BLAS.

    python benchmarks/search.py [--n 2 4] [--questions 1 8] [--stage-tokens 32] [--judge-tokens 16]
        [--reference-questions 1] [--repeats 2] [--preset mid] [--dtype float32] [--skip-reference] [--stepwise]
        [--compile-only] [--profile]
"""
from __future__ import annotations

import argparse
import atexit
import collections
import glob
import os
import re
import shutil
import sys
import tempfile
import time

PROFILE_DUMP = tempfile.mkdtemp(prefix="search_hlo_") if "--profile" in sys.argv else None
if PROFILE_DUMP:  # XLA reads its flags when jax starts: the profiler's op events and the optimized HLO that names them
    atexit.register(shutil.rmtree, PROFILE_DUMP, True)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true"
                               f" --xla_dump_to={PROFILE_DUMP} --xla_dump_hlo_as_text"
                               " --xla_dump_hlo_module_re=search_batch")

import jax  # noqa: E402 (after the flags)
import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402

import decode_profile  # noqa: E402
import matmul_rate  # noqa: E402
import llavao1_jax as lj  # noqa: E402
from generate import random_model  # noqa: E402
from llavao1_jax.model import preset  # noqa: E402
from llavao1_jax.search.prompts import CHECK_PARTS, STAGES, VERDICT_STRINGS, instruction, reminder  # noqa: E402

SCOPES = ("candidates", "selected", "judge_base", "compare", "precheck")  # stage_program's named scopes

QUESTIONS = ["How many red squares are in the picture?", "Which shape is the largest, and what colour is it?",
             "Are there more circles than triangles? Answer yes or no.", "What is the sum of the two numbers shown?",
             "Which object is closest to the left edge?", "Is the blue shape above the green one?",
             "How many shapes are there in total?", "What colour is the smallest triangle?"]


def make_questions(count: int, size: int) -> list[dict]:
    rng = np.random.default_rng(0)
    return [{"question": QUESTIONS[i % len(QUESTIONS)],
             "image": PIL.Image.fromarray((rng.random((2 * size, 2 * size, 3)) * 255).astype(np.uint8))}
            for i in range(count)]


def ours(generator, processor, questions, config, repeats: int) -> tuple[float, dict, float]:
    """Seconds per question of the fastest of `repeats` warm searches, its totals, and the compile seconds of the
    cold call before them."""
    cold = lj.search(generator, processor, questions, config)[0].trace["totals"]["compile_seconds"]
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        results = lj.search(generator, processor, questions, config)
        runs.append(((time.perf_counter() - start) / len(questions), results[0].trace["totals"]))
    return (*min(runs, key=lambda run: run[0]), cold)


class Reference:
    """The original stage-level beam search on transformers: one `generate` per candidate and per judge call."""

    def __init__(self, hf_model, processor, n: int, stage_tokens: int, judge_tokens: int):
        self.hf, self.processor, self.n = hf_model, processor, n
        self.stage_tokens, self.judge_tokens = stage_tokens, judge_tokens
        self.candidate_tokens = self.judge_tokens_total = 0

    def generate(self, text: str, image, tokens: int) -> str:
        import torch

        batch = self.processor(images=[[image]] if image is not None else None, text=[text])
        inputs = {k: torch.from_numpy(np.asarray(v)) for k, v in batch.items()}
        with torch.no_grad():
            out = self.hf.generate(**inputs, do_sample=True, temperature=0.6, top_p=0.9, max_new_tokens=tokens,
                                   min_new_tokens=tokens)
        new = out[0, batch["input_ids"].shape[1]:].tolist()
        return self.processor.tokenizer.decode(new, skip_special_tokens=True), len(new)

    def chat(self, text: str, image) -> str:
        content = ([{"type": "image"}] if image is not None else []) + [{"type": "text", "text": text}]
        return self.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)

    def judge(self, stage: str, question: str, hint: str, first: str, second: str, image) -> int:
        text = (instruction(stage) + f"Question: {question}" + (f"\nHint about the question: {hint}" if hint else "")
                + f"\nResponse 1: {first}\nResponse 2: {second}" + reminder(stage))
        verdict, count = self.generate(self.chat(text, image), image, self.judge_tokens)
        self.judge_tokens_total += count
        return 1 if VERDICT_STRINGS[0] in verdict else 2

    def run(self, question: str, image, rng) -> str:
        prompt, answer, chosen = self.chat(question, image), "", {}
        for stage in STAGES:
            candidates = []
            for _ in range(self.n):
                text, count = self.generate(prompt + answer, image, self.stage_tokens)
                self.candidate_tokens += count
                candidates.append(text if f"</{stage}>" in text else text + f"</{stage}>")
            correct = None
            if stage == "REASONING":
                correct = []
                for candidate in candidates:
                    check = (CHECK_PARTS[0] + chosen["CAPTION"] + CHECK_PARTS[1] + question + CHECK_PARTS[2]
                             + candidate + CHECK_PARTS[3])
                    verdict, count = self.generate(self.chat(check, None), None, self.judge_tokens)
                    self.judge_tokens_total += count
                    correct.append("incorrect" not in verdict)
            hint = {"REASONING": chosen.get("CAPTION", ""),
                    "CONCLUSION": chosen.get("CAPTION", "") + chosen.get("REASONING", "")}.get(stage, "")
            alive = list(rng.permutation(self.n))
            while len(alive) > 1:
                a, b = alive.pop(0), alive.pop(0)
                verdict = self.judge(stage, question, hint, candidates[a], candidates[b], image)
                if correct is not None and correct[a] != correct[b]:
                    verdict = 1 if correct[a] else 2
                alive.append(a if verdict == 1 else b)
            chosen[stage] = candidates[alive[0]]
            answer += chosen[stage]
        return answer


def profile(generator, processor, questions, config) -> None:
    """Prints where a warm one-jit search of `questions` spends its time (see the module docstring)."""
    lj.search(generator, processor, questions, config)  # cold: compiles, and dumps the optimized HLO
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        start = time.perf_counter()
        lj.search(generator, processor, questions, config)
        wall = time.perf_counter() - start
        jax.profiler.stop_trace()
        times = decode_profile.op_times(trace_dir)
    dumps = glob.glob(os.path.join(PROFILE_DUMP, "*search_batch*after_optimizations.txt"))
    ops = decode_profile.hlo_ops(open(max(dumps, key=os.path.getmtime)).read())
    vocab = generator.config.text.vocab_size
    table = collections.defaultdict(collections.Counter)
    for name, ns in times.items():
        if name.split(".")[0] in ("while", "conditional", "call"):
            continue
        shape, _, source = ops.get(name, ("", "", ""))
        part = next((scope for scope in SCOPES if f"/{scope}/" in source),
                    "prompts" if "jit(prefill)" in source else "other")
        step = "decode" if "jit(decode)" in source else "prefill"
        kind = ("LM head" if f",{vocab}]" in shape and "dot_general" in source else
                "sampling" if "next_tokens" in source else "rest")
        table[f"{part} / {step}"][kind] += ns / 1e9
    total = sum(sum(row.values()) for row in table.values())
    print(f"N={config.n}, {len(questions)} questions: {wall:.2f} s wall, {total:.2f} s of op time")
    print(f"{'part / step':<24}{'LM head':>9}{'sampling':>10}{'rest':>8}{'total':>8}{'share':>7}")
    for key, row in sorted(table.items(), key=lambda item: -sum(item[1].values())):
        cells = "".join(f"{row[kind]:>{width}.2f}" for kind, width in (("LM head", 9), ("sampling", 10), ("rest", 8)))
        print(f"{key:<24}{cells}{sum(row.values()):>8.2f}{sum(row.values()) / total:>7.0%}")


def stage_config(n: int, args) -> lj.SearchConfig:
    """The self-judged stage search with generated verdicts and fixed budgets (min = max)."""
    return lj.SearchConfig(method="stage", n=n, judge="self", max_stage_tokens=args.stage_tokens,
                           min_stage_tokens=args.stage_tokens, judge_max_tokens=args.judge_tokens,
                           judge_min_tokens=args.judge_tokens)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--questions", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--stage-tokens", type=int, default=32)
    parser.add_argument("--judge-tokens", type=int, default=16)
    parser.add_argument("--reference-questions", type=int, default=1)
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--preset", default="mid", help="model shape, random weights (e.g. llama-3.2-11b-vision)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=2, help="warm searches of ours per row; the fastest counts")
    parser.add_argument("--stepwise", action="store_true", help="also time the stepwise path (one_jit=False)")
    parser.add_argument("--compile-only", action="store_true", help="only the compile seconds of one cold search")
    parser.add_argument("--profile", action="store_true", help="where a warm one-jit search spends its time")
    args = parser.parse_args()

    config = preset(args.preset, scan_layers=False, dtype=args.dtype, param_dtype=args.dtype)
    setup = f"{args.preset} config, {args.dtype}, one {config.vision.max_num_tiles}-tile image per question"
    model = random_model(config)
    processor = lj.Processor.llama3_2_vision(tile_size=config.vision.image_size,
                                             max_image_tiles=config.vision.max_num_tiles)
    generator = lj.Generator(model)
    if args.profile:
        for n in args.n:
            for count in args.questions:
                profile(generator, processor, make_questions(count, config.vision.image_size), stage_config(n, args))
        return
    if args.compile_only:
        print(f"{setup}: compile seconds of the one-jit stage search "
              f"(self-judge, generated verdicts, {args.stage_tokens} tokens a stage, {args.judge_tokens} a judge call)")
        for n in args.n:
            for count in args.questions:
                questions = make_questions(count, config.vision.image_size)
                runs = []
                for _ in range(2):                                  # cold, then warm
                    start = time.process_time()
                    totals = lj.search(generator, processor, questions, stage_config(n, args))[0].trace["totals"]
                    runs.append((time.process_time() - start, totals["compile_seconds"]))
                (cold, wall), (warm, _) = runs
                print(f"N={n} questions={count}: compile {wall:.1f} s wall; process CPU seconds cold {cold:.1f} - "
                      f"warm {warm:.1f} = {cold - warm:.1f} s spent compiling")
        return
    hf = None
    if not args.skip_reference:
        import torch
        from transformers import MllamaForConditionalGeneration

        with tempfile.TemporaryDirectory() as directory:
            lj.save_pretrained(model, directory)
            hf = MllamaForConditionalGeneration.from_pretrained(directory, attn_implementation="sdpa",
                                                                torch_dtype=getattr(torch, args.dtype)).eval()
    print(f"{setup}; {args.stage_tokens} tokens a stage, "
          f"{args.judge_tokens} a judge call (min = max), self-judge with generated verdicts")
    print(f"{'N':>2} | {'questions':>9} | {'path':>8} | {'ours s/q':>8} | {'ours q/min':>10} | {'ref s/q':>8} | "
          f"{'ratio':>6} | "
          f"{'ours tokens':>15} | {'ref tokens':>15} | breakdown (s) | compile s (cold call)")
    paths = {"one_jit": True, "stepwise": False} if args.stepwise else {"one_jit": True}
    for n in args.n:
        search = stage_config(n, args)
        ref_seconds, ref_tokens = None, "-"
        if hf is not None:
            reference = Reference(hf, processor, n, args.stage_tokens, args.judge_tokens)
            sample = make_questions(args.reference_questions, config.vision.image_size)
            reference.generate(reference.chat("warm-up", sample[0]["image"]), sample[0]["image"], 2)
            reference.candidate_tokens = reference.judge_tokens_total = 0
            start = time.perf_counter()
            for i, q in enumerate(sample):
                reference.run(q["question"], q["image"], np.random.default_rng(i))
            ref_seconds = (time.perf_counter() - start) / len(sample)
            ref_tokens = (f"{reference.candidate_tokens // len(sample)}+"
                          f"{reference.judge_tokens_total // len(sample)}/q")
        for count in args.questions:
            for path, one_jit in paths.items():
                seconds, totals, cold = ours(generator, processor, make_questions(count, config.vision.image_size),
                                             search.replace(one_jit=one_jit), args.repeats)
                ratio = f"{ref_seconds / seconds:5.2f}x" if ref_seconds else f"{'-':>6}"
                ref = f"{ref_seconds:8.2f}" if ref_seconds else f"{'-':>8}"
                mine = f"{totals['candidate_tokens'] // count}+{totals['judge_tokens'] // count}/q"
                parts = totals["breakdown"]
                breakdown = ", ".join(f"{name} {value:.2f}" for name, value in parts.items())
                print(f"{n:2d} | {count:9d} | {path:>8} | {seconds:8.2f} | {60 / seconds:10.1f} | {ref} | {ratio} | "
                      f"{mine:>15} | {ref_tokens:>15} | {breakdown} "
                      f"({parts['other'] / totals['seconds']:.0%} other) | {cold:.1f}")
    if hf is not None:
        print(matmul_rate.describe(matmul_rate.xla_gflops(), matmul_rate.torch_gflops()))


if __name__ == "__main__":
    main()
