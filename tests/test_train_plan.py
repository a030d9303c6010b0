"""The capacity planner on the tiny config over 8 fake devices: its memory figures add up, and it plans attention
in the accelerator's blocks, not the CPU's."""
import jax
import numpy as np
from flax import nnx

from configs.sft_tiny import get_config
from llavao1_jax.model import layers
from llavao1_jax.model.mllama import Mllama
from llavao1_jax.train import plan as planner
from llavao1_jax.train import program
from llavao1_jax.train.state import model_config

SEQ = 64


def fsdp8_config():
    config = get_config()
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 8, 1
    config.batch_size = 8
    return config


def test_plan_figures_add_up(monkeypatch):
    config = fsdp8_config()
    built = {}
    real_build = program.build_program
    monkeypatch.setattr(program, "build_program", lambda *a, **k: built.setdefault("program", real_build(*a, **k)))
    figures = planner.plan(config, seq_len=SEQ)
    params = nnx.state(Mllama(model_config(config), rngs=nnx.Rngs(0)), nnx.Param)
    sizes = [int(np.prod(a.shape)) for a in jax.tree.leaves(params)]
    # fsdp=8 over float32 parameters: at least an eighth of them per device, and no more than an eighth of the
    # sharded ones plus every replicated one
    shardings = jax.tree.leaves(built["program"].shardings.params)
    replicated = sum(n for n, s in zip(sizes, shardings) if s.is_fully_replicated)
    assert 4 * sum(sizes) / 8 <= figures.params_bytes <= 4 * (sum(sizes) / 8 + replicated)
    assert replicated < sum(sizes) / 8  # most of the model is sharded
    # AdamW keeps two moments per parameter, sharded alike, and a step count
    assert 2 * figures.params_bytes <= figures.opt_state_bytes <= 2 * figures.params_bytes + 64
    assert figures.temp_bytes > 0 and figures.flops > 0
    assert figures.peak_bytes == (figures.argument_bytes + figures.output_bytes - figures.alias_bytes
                                  + figures.temp_bytes)
    assert figures.model_flops == 6.0 * sum(sizes) * config.batch_size * SEQ / 8


def test_plan_blocks_attention_as_an_accelerator(monkeypatch):
    """The planner compiles on CPU, but the model it plans blocks attention as an accelerator does (1 GiB of
    scores spanning the batch): the CPU's small blocks of a few rows would keep copies of K and V per block for the
    backward pass, an activation figure no GPU run has (1186 GB a device for the 11B recipe, against 48 GB)."""
    planned = []
    real_build = program.build_program
    monkeypatch.setattr(program, "build_program", lambda config, cfg, *a, **k: planned.append(cfg) or
                        real_build(config, cfg, *a, **k))
    planner.plan(fsdp8_config(), seq_len=SEQ)
    (cfg,) = planned
    assert (cfg.attention_block_bytes, cfg.attention_split_batch) == layers.default_blocking("gpu") == (1 << 30, False)
    options = {m.attention_options for _, m in nnx.iter_graph(Mllama(cfg, rngs=nnx.Rngs(0)))
               if hasattr(m, "attention_options")}
    assert options == {layers.AttentionOptions("xla", 1 << 30, False)}
