"""The pieces of a run that depend only on the config and the mesh: the model's graph and abstract state, the
optimiser, the shardings of the train state and of a batch, and the jitted train and eval steps. The loop, the
capacity planner, the benchmark and the tests all build their run through `build_program`."""
from __future__ import annotations

import dataclasses
from typing import Callable

import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from llavao1_jax.model.config import MllamaConfig
from llavao1_jax.train import data, optimizer, step, task_vocab
from llavao1_jax.train import state as train_state


XLA_CPU_SCHEDULERS = ("default", "memory_optimized", "concurrency_optimized")


def compiler_options(config: ml_collections.ConfigDict, mesh: Mesh) -> dict:
    """XLA options of the jitted steps: on a mesh of CPU devices, the instruction scheduler of
    `config.xla_cpu_scheduler` ("memory_optimized" orders the step for the least peak memory, e.g. creating a
    zeroed gradient buffer only when the backward pass reaches it; "concurrency_optimized" for parallelism;
    "default": XLA's choice). Other backends: none."""
    scheduler = config.xla_cpu_scheduler
    if scheduler not in XLA_CPU_SCHEDULERS:
        raise ValueError(f"config.xla_cpu_scheduler={scheduler!r}; choose from {XLA_CPU_SCHEDULERS}")
    if mesh.devices.flat[0].platform != "cpu":
        return {}
    return {"xla_cpu_scheduler_type": f"CPU_SCHEDULER_TYPE_{scheduler.upper()}"}


@dataclasses.dataclass(frozen=True)
class TrainProgram:
    graphdef: nnx.GraphDef
    abstract_params: nnx.State
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    shardings: train_state.TrainState
    batch_shardings: dict
    train_step: Callable  # jitted (state, batch) -> (state, metrics), state donated
    eval_step: Callable   # jitted (params, batch) -> (summed loss, supervised tokens)
    vocab_lookup: np.ndarray | None = None  # task vocabulary: token id -> head column (task_vocab.target_lookup)

    def abstract_state(self, seed: int) -> train_state.TrainState:
        return train_state.abstract_train_state(self.abstract_params, self.tx, seed)


def build_program(config: ml_collections.ConfigDict, cfg: MllamaConfig, mesh: Mesh, rules, *, steps_per_epoch: int,
                  total_steps: int, vocab_ids: np.ndarray | None = None) -> TrainProgram:
    """Everything `config` and `cfg` define on `mesh`, nothing allocated (the train state is created separately by
    `state.init_train_state` or restored from a checkpoint). `vocab_ids`: the task vocabulary of the loss, or None
    for the whole vocabulary."""
    schedule = optimizer.learning_rate_schedule(config.optim, steps_per_epoch=steps_per_epoch,
                                                total_steps=total_steps)
    graphdef, abstract_params = train_state.abstract_model(cfg)
    params_tree = nnx.to_pure_dict(abstract_params)
    tx = optimizer.make_optimizer(config.optim, params_tree, schedule)
    shardings = train_state.train_state_shardings(abstract_params, tx, mesh, rules)
    batch_shardings = data.batch_shardings(mesh, rules, config.batch_size)
    options = compiler_options(config, mesh)
    train_fn = step.make_train_step(graphdef, tx, schedule, frozen=optimizer.frozen_mask(config.optim, params_tree),
                                    grad_accum=config.grad_accum, chunk_size=config.loss.chunk_size,
                                    param_shardings=shardings.params, vocab_ids=vocab_ids)
    return TrainProgram(
        graphdef=graphdef, abstract_params=abstract_params, tx=tx, schedule=schedule, shardings=shardings,
        batch_shardings=batch_shardings,
        train_step=step.jit_train_step(train_fn, shardings, batch_shardings, mesh, options),
        eval_step=step.jit_eval_step(graphdef, config.loss.chunk_size, shardings.params, batch_shardings, mesh,
                                     vocab_ids, options),
        vocab_lookup=None if vocab_ids is None else task_vocab.target_lookup(vocab_ids, cfg.text.vocab_size))
