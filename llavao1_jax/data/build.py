"""Build the project's datasets as ArrayRecord (readable with `tfds.data_source`, no TensorFlow needed).

    python -m llavao1_jax.data.build llava_cot_100k --jsonl PATH --image-root DIR --data-dir DIR [--strict] [--report PATH]
    python -m llavao1_jax.data.build synthetic_reasoning --num-train N --num-test M --seed S --data-dir DIR [--image-size PX]
        [--judge-fraction F] [--caption-style {objects,grid,cells,numbered}] [--background {light,mean}]
        [--question-types count,compare,...]

The last line printed says how many records were kept and skipped. Exit status 1 when strict mode finds a bad record,
when the inputs are unusable (missing jsonl or image root), or when the data dir already holds the dataset built with other
parameters (pass --overwrite to rebuild).
"""
import argparse
import contextlib
import io
import json
import sys

import tensorflow_datasets as tfds
from absl import logging as absl_logging

from llavao1_jax.data.llava_cot_100k import InvalidRecordError, LlavaCot100k, check_inputs
from llavao1_jax.data import synthetic_reasoning as sr
from llavao1_jax.data.synthetic_reasoning import SyntheticReasoning

FILE_FORMAT = "array_record"


@contextlib.contextmanager
def _tfds_quiet():
    """Hides TFDS's own lines around preparing a dataset: "Downloading and preparing dataset ..." (nothing is
    downloaded), "Dataset ... downloaded and prepared", a warning that the version folder has no
    dataset_info.json yet, and its "Generating splits" and "Shuffling" progress bars. Our builders print nothing
    to stdout, and their own progress bars (stderr) stay."""
    verbosity = absl_logging.get_verbosity()
    bars = getattr(tfds.core.utils.tqdm_utils, "_active", True)
    absl_logging.set_verbosity(absl_logging.ERROR)
    tfds.display_progress_bar(False)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        tfds.display_progress_bar(bars)
        absl_logging.set_verbosity(verbosity)


def _prepare(builder: tfds.core.DatasetBuilder, overwrite: bool) -> None:
    """Generate the dataset unless the data dir already has it (always, if `overwrite`)."""
    mode = tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
    if overwrite:
        mode = tfds.download.GenerateMode.FORCE_REDOWNLOAD
    with _tfds_quiet():
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(download_mode=mode))


def build_llava_cot_100k(jsonl, image_root, data_dir, *, strict: bool = False, num_workers: int = 8,
                         overwrite: bool = False) -> dict:
    """Validate and write LLaVA-CoT-100k; returns the validation report (see `ValidationReport.to_dict`).

    If `data_dir` already holds the dataset it is kept as it is (unless `overwrite`) and its stored report is returned.
    Raises `FileNotFoundError` for missing inputs and `InvalidRecordError` in strict mode.
    """
    check_inputs(jsonl, image_root)
    builder = LlavaCot100k(jsonl=jsonl, image_root=image_root, strict=strict, num_workers=num_workers,
                           data_dir=data_dir, file_format=FILE_FORMAT)
    _prepare(builder, overwrite)
    return dict(builder.info.metadata["validation"])


def build_synthetic_reasoning(data_dir, *, num_train: int, num_test: int, seed: int = 0, image_size: int = 112,
                              judge_fraction: float = 0.0, caption_style: str = "objects",
                              background: str = "light", question_types: tuple[str, ...] = sr.DEFAULT_QUESTION_TYPES,
                              overwrite: bool = False) -> dict:
    """Draw and write the synthetic dataset; returns the number of records per split (the train split holds
    round(judge_fraction * num_train) judge records after its num_train questions, see `judge_samples`; captions
    in `caption_style`, see `synthetic_reasoning.scene_caption`; images on `background`, see
    `synthetic_reasoning.BACKGROUNDS`; question types drawn uniformly from `question_types`).

    Raises `ValueError` if `data_dir` already holds it built with other parameters (unless `overwrite`).
    """
    builder = SyntheticReasoning(num_train=num_train, num_test=num_test, seed=seed, image_size=image_size,
                                 judge_fraction=judge_fraction, caption_style=caption_style, background=background,
                                 question_types=tuple(question_types),
                                 data_dir=data_dir,
                                 file_format=FILE_FORMAT)
    wanted = dict(builder.params)
    with _tfds_quiet():
        prepared = builder.is_prepared()
    if prepared and not overwrite and dict(builder.info.metadata["params"]) != wanted:
        raise ValueError(f"{builder.data_dir} holds synthetic_reasoning built with {dict(builder.info.metadata['params'])}, "
                         f"not {wanted}; use another --data-dir or pass --overwrite")
    _prepare(builder, overwrite)
    return {split: info.num_examples for split, info in builder.info.splits.items()}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m llavao1_jax.data.build", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="dataset", required=True)
    llava = sub.add_parser("llava_cot_100k", help="a local copy of LLaVA-CoT-100k")
    llava.add_argument("--jsonl", required=True, help="the train.jsonl file")
    llava.add_argument("--image-root", required=True, help="folder the jsonl image paths are relative to")
    llava.add_argument("--strict", action="store_true", help="fail at the first invalid record instead of skipping it")
    llava.add_argument("--report", help="write the validation report (JSON) here")
    llava.add_argument("--num-workers", type=int, default=8, help="threads reading and decoding images")
    synthetic = sub.add_parser("synthetic_reasoning", help="the project's synthetic shapes dataset")
    synthetic.add_argument("--num-train", type=int, required=True)
    synthetic.add_argument("--num-test", type=int, required=True)
    synthetic.add_argument("--seed", type=int, default=0)
    synthetic.add_argument("--image-size", type=int, default=112, help="image side in pixels")
    synthetic.add_argument("--judge-fraction", type=float, default=0.0,
                           help="judge records added to the train split, per question record")
    synthetic.add_argument("--caption-style", choices=sr.CAPTION_STYLES, default="objects",
                           help="captions list the shapes (objects), every cell of the grid (grid), or every cell "
                                "after its name (cells) or number (numbered)")
    synthetic.add_argument("--question-types", default=",".join(sr.DEFAULT_QUESTION_TYPES),
                           type=lambda text: tuple(text.split(",")),
                           help=f"comma-separated question types drawn uniformly, out of {','.join(sr.QUESTION_TYPES)}")
    synthetic.add_argument("--background", choices=tuple(sr.BACKGROUNDS), default="light",
                           help="image background: light gray, or the processor's normalisation mean (mean)")
    for p in (llava, synthetic):
        p.add_argument("--data-dir", required=True, help="TFDS data dir to write into")
        p.add_argument("--overwrite", action="store_true", help="rebuild even if the data dir already has the dataset")
    return parser


def main(argv=None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    tfds.disable_progress_bar()  # the builders show their own bars
    try:
        if args.dataset == "llava_cot_100k":
            report = build_llava_cot_100k(args.jsonl, args.image_root, args.data_dir, strict=args.strict,
                                          num_workers=args.num_workers, overwrite=args.overwrite)
            if args.report:
                with open(args.report, "w") as f:
                    json.dump(report, f, indent=2)
            kept, skipped = report["kept"], report["skipped"]
            detail = ", ".join(f"{reason} {count}" for reason, count in report["by_reason"].items())
            print(f"{args.data_dir}: llava_cot_100k" + (f" (skipped: {detail})" if detail else ""))
        else:
            counts = build_synthetic_reasoning(args.data_dir, num_train=args.num_train, num_test=args.num_test,
                                               seed=args.seed, image_size=args.image_size,
                                               judge_fraction=args.judge_fraction,
                                               caption_style=args.caption_style, background=args.background,
                                               question_types=args.question_types, overwrite=args.overwrite)
            kept, skipped = sum(counts.values()), 0
            print(f"{args.data_dir}: synthetic_reasoning " + ", ".join(f"{s} {n}" for s, n in sorted(counts.items())))
    except (InvalidRecordError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"kept {kept} records, skipped {skipped}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
