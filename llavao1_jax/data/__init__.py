"""Data: TFDS builders (LLaVA-CoT-100k from a local copy, the synthetic reasoning set) and the SFT input pipeline.

* `build` (also `python -m llavao1_jax.data.build ...`): `build_llava_cot_100k`, `build_synthetic_reasoning`; datasets
  are ArrayRecord, read back with `tfds.data_source` (no TensorFlow needed).
* `pipeline`: `host_source`, `sft_dataset`, `SFTIterator` (Grain; batches with assistant-only `labels`), `to_messages`,
  `encode_conversation`, `IGNORE_INDEX`.
* `synthetic_reasoning`: `make_problem`, `draw_problem`, `draw_scene`, `make_example`, the `SyntheticReasoning` builder.
* `judge_samples`: `judge_example`, `wrong_stage`, `judge_turns` (the judge records of `judge_fraction`).
* `llava_cot_100k`: `validate_line`, `ValidationReport`, the `LlavaCot100k` builder.
* `formats`: `parse_stages`, `render_answer`, `convert_answer` (tagged / untagged / direct answers), `tagged_pieces`,
  `is_judge_reply`.

Importing this package registers both builders with TFDS.
"""
from llavao1_jax.data import llava_cot_100k, synthetic_reasoning  # noqa: F401  (registers the builders)
