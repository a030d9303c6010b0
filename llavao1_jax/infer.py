"""Command line search: answer a question about an image (or a file of them) with any search method.

    llavao1-infer --model DIR --image PATH --question "How many squares?" --search stage --n 4 --judge self
        [--verdict probability] [--max-stage-tokens 256] [--json]
    llavao1-infer --model DIR --questions questions.jsonl --search best_of_n --n 4 --json > answers.jsonl

DIR is a transformers-format Mllama checkpoint (its tokenizer files when present, else the packaged Llama-3.2-Vision
tokenizer). A questions file holds one {"question": ..., "image": PATH or null} per line; image paths are relative
to the file. Prints each answer's four stages, or with --json one JSON line per question with its trace. Also
`python -m llavao1_jax.infer`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tqdm import tqdm

import llavao1_jax as lj
from llavao1_jax.cli.generate import load_for_decoding
from llavao1_jax.json_lines import read_objects
from llavao1_jax.search.config import JUDGES, METHODS, VERDICTS
from llavao1_jax.search.prompts import STAGES


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="llavao1-infer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint directory (config.json + safetensors)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--question", help="one question (with --image, or text only)")
    source.add_argument("--questions", help="a JSON-lines file of {'question', 'image'} objects")
    parser.add_argument("--image", help="image file for --question")
    parser.add_argument("--search", default="stage", choices=METHODS)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--judge", default="self", choices=JUDGES[:2])
    parser.add_argument("--verdict", default="generate", choices=VERDICTS)
    parser.add_argument("--max-stage-tokens", type=int, default=256)
    parser.add_argument("--judge-max-tokens", type=int, default=128)
    parser.add_argument("--batch-questions", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--json", action="store_true", help="one JSON line per question, with the trace")
    return parser.parse_args(argv)


def read_questions(args) -> list[dict]:
    """The questions of --question/--image or of the --questions file (a bad line is named)."""
    if args.question is not None:
        return [{"question": args.question, "image": args.image}]
    path = Path(args.questions)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    questions = []
    for _, item in read_objects(path, ("question",)):
        image = item.get("image")
        questions.append({"question": item["question"], "image": None if image is None else str(path.parent / image)})
    if not questions:
        raise ValueError(f"{path} holds no questions")
    return questions


def show(result) -> str:
    """The four stages of an answer, one block each."""
    return "\n".join(f"[{name}] {result.stages[name] or '(missing)'}" for name in STAGES)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        questions = read_questions(args)
        config = lj.SearchConfig(method=args.search, n=args.n, judge=args.judge, verdict=args.verdict,
                                 max_stage_tokens=args.max_stage_tokens, judge_max_tokens=args.judge_max_tokens,
                                 batch_questions=args.batch_questions, seed=args.seed)
        generator, processor = load_for_decoding(args.model, args.dtype)
        start = time.perf_counter()
        step = lambda kind: print(f"[{kind} chosen, {time.perf_counter() - start:.1f} s]", file=sys.stderr)
        with tqdm(total=len(questions), desc=f"{args.search} search", unit="question", file=sys.stderr,
                  disable=len(questions) == 1) as bar:
            results = lj.search(generator, processor, questions, config,
                                on_batch=lambda done, total: bar.update(done - bar.n),
                                on_step=step if len(questions) == 1 else None)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for question, result in zip(questions, results):
        if args.json:
            print(json.dumps({"question": question["question"], "text": result.text, "stages": result.stages,
                              "answer": result.answer, "trace": result.trace}))
        else:
            print(f"Q: {question['question']}\n{show(result)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
