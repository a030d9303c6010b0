"""Command line generation that streams the answer as it is made.

    llavao1-generate --model DIR --image PATH --prompt "What is in the image?"
        [--max-new-tokens 512] [--sample --temperature 0.6 --top-p 0.9] [--stop "</CONCLUSION>"] [--chunk 8]

DIR is a transformers-format Mllama checkpoint; its tokenizer files are used when present, else the packaged
Llama-3.2-Vision tokenizer with tiles sized for the model. The prompt goes through the Instruct chat template (one
user turn with the image) unless --raw. Decoding runs in jitted chunks of --chunk tokens; the text is printed after
each chunk. Also `python -m llavao1_jax.cli.generate`.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import llavao1_jax as lj
from llavao1_jax import inference
from llavao1_jax.processor import Processor


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="llavao1-generate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint directory (config.json + safetensors)")
    parser.add_argument("--image", action="append", default=[], help="image file; repeat for several images")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--raw", action="store_true", help="use the prompt as is (no chat template)")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--min-new-tokens", type=int, default=0)
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stop", action="append", default=[], help="stop string; repeat for several")
    parser.add_argument("--chunk", type=int, default=8, help="tokens decoded between prints")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args(argv)
    if args.chunk < 1:
        parser.error("--chunk must be >= 1")
    return args


def load_processor(model_dir: Path, model) -> Processor:
    """The checkpoint's own processor files, else the packaged tokenizer with tiles sized for the model."""
    if (model_dir / "tokenizer.json").is_file():
        return Processor.from_pretrained(model_dir)
    vision = model.config.vision
    return Processor.llama3_2_vision(tile_size=vision.image_size, max_image_tiles=vision.max_num_tiles)


def load_for_decoding(model_dir: str | Path, dtype: str) -> tuple[inference.Generator, Processor]:
    """A checkpoint's `Generator` (per-layer layout; restricted to the task vocabulary saved beside a model trained
    with one, `train/task_vocab.py`) and its processor."""
    from llavao1_jax.train import task_vocab

    model = lj.load_pretrained(model_dir, dtype=dtype, scan_layers=False)  # the layout decoding reads
    generator = inference.Generator(model, allowed_token_ids=task_vocab.load(model_dir))
    return generator, load_processor(Path(model_dir), model)


def prompt_text(processor: Processor, args) -> str:
    if args.raw:
        return args.prompt
    content = [{"type": "image"} for _ in args.image] + [{"type": "text", "text": args.prompt}]
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)


def stream(generator: inference.Generator, processor: Processor, batch: dict, args,
           out=sys.stdout) -> inference.GenerationResult:
    """Decodes in chunks of `args.chunk` tokens, writing the new text after each chunk."""
    state = generator.prefill(batch, max_new_tokens=args.max_new_tokens, seed=args.seed)
    decoder = inference.Decoder(generator, state, max_new_tokens=args.max_new_tokens,
                                min_new_tokens=args.min_new_tokens, do_sample=args.sample,
                                temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                                stop_strings=args.stop, processor=processor)
    shown = ""
    while True:
        finished = decoder.run(args.chunk)
        result = decoder.result()
        text = result.texts[0]
        if not finished:
            text = text.rstrip("\ufffd")  # an unfinished UTF-8 sequence: wait for its other bytes
        out.write(text[len(shown):])
        out.flush()
        shown = text
        if finished:
            out.write("\n")
            return result


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        generator, processor = load_for_decoding(args.model, args.dtype)
        batch = processor(images=[args.image] if args.image else None, text=prompt_text(processor, args))
        start = time.perf_counter()
        result = stream(generator, processor, batch, args)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    n = int(result.lengths[0])
    print(f"[{n} tokens, {result.finish_reason[0]}, {seconds:.1f} s including compilation]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
