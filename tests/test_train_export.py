"""The trainer's export (`workdir/hf`): transformers loads the weights and gives our logits, and the processor files
load as a transformers processor. Slow: compiles our forward and loads transformers (about a minute on 2 cores)."""
import numpy as np
import pytest
from flax import nnx

from configs.sft_tiny import get_config
from llavao1_jax.model.mllama import init_model
from llavao1_jax.train import data
from llavao1_jax.train.loop import export_hf
from llavao1_jax.train.state import abstract_model, model_config
from tests.hf_reference import hf_logits, relative_error


@pytest.mark.slow
def test_exported_model_loads_in_transformers_with_our_logits(tmp_path):
    import transformers

    config = get_config()
    cfg = model_config(config)
    graphdef, _ = abstract_model(cfg)
    params = nnx.to_pure_dict(nnx.state(init_model(cfg, seed=3)))
    cross = params["language_model"]["cross_layers"]
    for gate in ("cross_attn_attn_gate", "cross_attn_mlp_gate"):  # open the zero-initialised gates, as training does
        cross[gate] = cross[gate] + 0.5
    processor = data.make_processor(config, cfg)
    export_hf(graphdef, params, processor, tmp_path / "hf", vocab_ids=None)

    batch = data.random_batch(cfg, 2, 24, seed=1)
    batch.pop("labels")
    ours = np.asarray(nnx.merge(graphdef, params)(**batch))
    model = transformers.MllamaForConditionalGeneration.from_pretrained(tmp_path / "hf", torch_dtype="float32",
                                                                        attn_implementation="eager")
    theirs = hf_logits(model.eval(), {k: v.astype(np.int64) if v.dtype == np.int32 else v for k, v in batch.items()})
    assert relative_error(ours, theirs) < 1e-5
    loaded = transformers.AutoProcessor.from_pretrained(tmp_path / "hf")
    assert loaded.image_processor.size["height"] == cfg.vision.image_size
