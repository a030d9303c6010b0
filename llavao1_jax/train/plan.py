"""The capacity planner: will a config fit its devices?

    python -m llavao1_jax.train.plan --config configs/sft_llava_cot_11b.py [--seq_len 4096] [--config.FIELD=VALUE]

Lowers and compiles the config's train step ahead of time on a mesh of fake CPU devices with abstract inputs (no
parameter is ever materialised), then prints per-device memory: parameters and optimiser state (from their
shardings), what the compiled step holds as arguments, outputs and temporaries, and FLOPs: XLA's count of the
compiled step (which counts a scanned layer once, not once per layer) beside 6 x parameters x tokens. The CPU
compiler stands in for the accelerator's: cuDNN attention is planned as XLA attention in the accelerator's blocks
(1 GiB of scores spanning the batch, not the CPU's 8 MiB blocks of a few rows, which would keep per-block copies of
K and V for the backward pass), and the CPU backend may keep some bfloat16 temporaries in float32, so the
temporaries are an upper estimate.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from absl import app, flags
from ml_collections import config_flags

_DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "sft_llava_cot_11b.py"


@dataclasses.dataclass(frozen=True)
class Plan:
    """Per-device figures of one compiled train step (bytes and FLOPs)."""

    devices: int
    mesh: dict
    params_bytes: int
    opt_state_bytes: int
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    flops: float
    model_flops: float

    @property
    def peak_bytes(self) -> int:
        """Arguments + outputs not aliased onto them + temporaries: what the device must hold during a step."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes

    def table(self) -> str:
        gb = lambda n: f"{n / 1e9:8.2f} GB"
        rows = [("parameters", gb(self.params_bytes)), ("optimiser state", gb(self.opt_state_bytes)),
                ("step arguments (state + batch)", gb(self.argument_bytes)),
                ("step outputs (aliased onto arguments)", f"{gb(self.output_bytes)} ({gb(self.alias_bytes)})"),
                ("temporaries (activations, gradients)", gb(self.temp_bytes)),
                ("peak during a step", gb(self.peak_bytes)),
                ("step FLOPs (XLA's count: each loop body once)", f"{self.flops:.4g}"),
                ("model FLOPs (6 x params x tokens / devices)", f"{self.model_flops:.4g}")]
        head = f"per device, {self.devices} devices, mesh {self.mesh}"
        return "\n".join([head] + [f"  {name:<44}{value}" for name, value in rows])


def _shard_bytes(abstract, shardings) -> int:
    import jax
    return sum(int(np.prod(s.shard_shape(a.shape))) * a.dtype.itemsize
               for a, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)))


def plan(config, *, seq_len: int | None = None, supervised_fraction: float = 1.0) -> Plan:
    """Compiles `config`'s train step for abstract inputs on the current (fake) devices and measures it."""
    import jax

    from llavao1_jax.model.layers import default_blocking
    from llavao1_jax.train import data, mesh as train_mesh, state as train_state
    from llavao1_jax.train.loss import loss_targets, supervised_length
    from llavao1_jax.train.program import build_program

    mesh, rules = train_mesh.mesh_from_config(config), train_mesh.rules_from_config(config)
    train_mesh.check_batch_layout(config, mesh, rules)
    block_bytes, split_batch = default_blocking("gpu")  # attention as the accelerator blocks it
    cfg = train_state.model_config(config).replace(attention_impl="xla",  # cuDNN does not lower on CPU
                                                   attention_block_bytes=block_bytes, attention_split_batch=split_batch)
    seq_len = seq_len or config.data.buckets[-1]
    program = build_program(config, cfg, mesh, rules, steps_per_epoch=1000, total_steps=1000)
    abstract = program.abstract_state(config.seed)
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
                         program.shardings)
    local = data.random_batch(cfg, 1, seq_len, supervised_fraction=supervised_fraction)
    local.update(loss_targets(local["labels"], supervised_length(local["labels"], config.loss.chunk_size)))
    local.pop("labels")
    batch = {k: jax.ShapeDtypeStruct((config.batch_size, *v.shape[1:]), v.dtype, sharding=program.batch_shardings[k])
             for k, v in local.items()}
    with jax.set_mesh(mesh):
        compiled = program.train_step.lower(state, batch).compile()
    memory = compiled.memory_analysis()
    n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(abstract.params))
    return Plan(devices=mesh.size, mesh=dict(mesh.shape),
                params_bytes=_shard_bytes(abstract.params, program.shardings.params),
                opt_state_bytes=_shard_bytes(abstract.opt_state, program.shardings.opt_state),
                argument_bytes=memory.argument_size_in_bytes, output_bytes=memory.output_size_in_bytes,
                alias_bytes=memory.alias_size_in_bytes, temp_bytes=memory.temp_size_in_bytes,
                flops=float((compiled.cost_analysis() or {}).get("flops", 0.0)),
                model_flops=6.0 * n_params * config.batch_size * seq_len / mesh.size)


def cli() -> None:
    """The command line: defines its flags here, so that importing this module defines none."""
    config_flag = config_flags.DEFINE_config_file("config", str(_DEFAULT_CONFIG), "ml_collections config file",
                                                  lock_config=True)
    devices_flag = flags.DEFINE_integer("devices", None, "fake devices (default: the mesh's size; required when "
                                        "the mesh has a -1 axis)")
    seq_len = flags.DEFINE_integer("seq_len", None, "tokens per sample (default: the largest bucket)")
    supervised = flags.DEFINE_float("supervised_fraction", 1.0, "share of the positions that carry a label")

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments {argv[1:]}")
        config = config_flag.value
        devices = devices_flag.value or int(np.prod([config.mesh.data, config.mesh.fsdp, config.mesh.tensor]))
        if devices <= 0:
            raise app.UsageError("the mesh has a -1 axis: pass --devices")
        import jax
        jax.config.update("jax_platforms", "cpu")
        jax.config.update("jax_num_cpu_devices", devices)
        print(plan(config, seq_len=seq_len.value, supervised_fraction=supervised.value).table())

    app.run(main)


if __name__ == "__main__":
    cli()
