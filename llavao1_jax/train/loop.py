"""`train(config, workdir)`: the SFT run, from a fresh state or the latest checkpoint in `workdir`.

Everything the config gets wrong (unknown mesh split, batch layout, schedule, model) is reported before anything
compiles. Then: the train state is created in its shards or restored; the step is compiled once per batch shape and
its memory analysis and FLOPs printed; the loop logs metrics (process 0), evaluates and samples every K steps,
saves checkpoints asynchronously, stops at the first non-finite step keeping the last good checkpoint, and exports
`workdir/hf` (transformers weights + processor files) at the end.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from llavao1_jax.config_utils import write_config
from llavao1_jax.data import pipeline, records
from llavao1_jax.inference import generate
from llavao1_jax.model.hf_checkpoint import save_pretrained
from llavao1_jax.processor.tokenizer import special_tokens
from llavao1_jax.train import checkpoint, data, metrics, optimizer, task_vocab
from llavao1_jax.train import mesh as train_mesh
from llavao1_jax.train import state as train_state
from llavao1_jax.train.program import build_program, compiler_options


class NonFiniteLossError(RuntimeError):
    """A step produced a non-finite loss or gradient norm; the run stopped without applying it."""


@dataclasses.dataclass
class CompiledStep:
    """The train step compiled ahead of time for each batch shape seen (memory analysis and FLOPs printed once)."""

    jitted: object
    executables: dict = dataclasses.field(default_factory=dict)

    def __call__(self, state, batch):
        key = tuple(sorted((k, v.shape) for k, v in batch.items()))
        if key not in self.executables:
            compiled = self.jitted.lower(state, batch).compile()
            self.executables[key] = compiled
            if jax.process_index() == 0:
                print(describe_compiled(compiled, dict(key)["input_ids"]), flush=True)
        return self.executables[key](state, batch)


def describe_compiled(compiled, input_shape) -> str:
    """One paragraph on a compiled step: per-device memory (arguments, outputs, temporaries) and FLOPs."""
    gib = lambda n: f"{n / 2 ** 30:.3f} GiB"
    lines = [f"compiled train step for input_ids {tuple(input_shape)}:"]
    memory = compiled.memory_analysis()
    if memory is not None:
        lines.append(f"  per device: arguments {gib(memory.argument_size_in_bytes)}, outputs "
                     f"{gib(memory.output_size_in_bytes)} (aliased {gib(memory.alias_size_in_bytes)}), "
                     f"temporaries {gib(memory.temp_size_in_bytes)}")
    flops = (compiled.cost_analysis() or {}).get("flops")
    if flops:
        lines.append(f"  FLOPs per device per step (XLA's count, loop bodies once): {flops:.4g}")
    return "\n".join(lines)


def _log_scalars(m: dict, *, steps: int, seconds: float, tokens: float, model_flops: float, peak: float) -> dict:
    """The logged scalars of a window of steps; MFU counts 6 x parameters x tokens against `peak` FLOP/s."""
    scalars = {"loss": float(m["loss"]), "grad_norm": float(m["grad_norm"]),
               "learning_rate": float(m["learning_rate"]), "supervised_tokens": float(m["supervised_tokens"]),
               "step_time": seconds / steps, "steps_per_second": steps / seconds,
               "tokens_per_second": tokens / seconds}
    if peak:
        scalars["mfu"] = model_flops * tokens / seconds / peak
    return scalars


def evaluate(program, params, config, processor, data_dir) -> float:
    """Mean held-out loss over the first `config.eval_batches` batches of the test split."""
    iterator = data.sft_iterator(config, processor, data_dir, "test", train=False)
    total = weight = 0.0
    for _, local in zip(range(config.eval_batches), iterator):
        loss_sum, count = program.eval_step(params, data.device_batch(local, program.batch_shardings,
                                                                      config.loss.chunk_size, program.vocab_lookup))
        total, weight = total + float(loss_sum), weight + float(count)
    return total / max(weight, 1.0)


def sample_answer(graphdef, params, config, processor, data_dir, vocab_ids) -> str:
    """The model's greedy answer to the first held-out question (the text decoder copied to the per-layer layout),
    restricted to the task vocabulary when there is one."""
    sample = records.to_sample(pipeline.host_source(config.data.name, "test", data_dir)[0])
    prompt = processor.apply_chat_template(pipeline.to_messages(sample.turns[:1]), add_generation_prompt=True)
    batch = processor(images=[[sample.image]], text=[prompt])
    result = generate(nnx.merge(graphdef, params), batch, max_new_tokens=config.sample_max_new_tokens,
                      processor=processor, allowed_token_ids=vocab_ids)
    return result.texts[0]


def task_vocabulary(config, processor, data_dir, workdir: Path, vocab_size: int):
    """The run's task vocabulary (`config.loss.task_vocab`), built from the whole train split and saved in the
    workdir by process 0, or the one saved there already (a resumed run); None without the option."""
    if not config.loss.get("task_vocab", False):
        return None
    saved = task_vocab.load(workdir)
    if saved is not None:
        return saved
    specials = [i for i in processor.tokenizer.convert_tokens_to_ids(special_tokens()) if i < vocab_size]
    source = pipeline.host_source(config.data.name, "train", data_dir, process_index=0, process_count=1)
    ids = task_vocab.collect(source, processor, config.data.answer_format, specials)
    if jax.process_index() == 0:
        task_vocab.save(ids, workdir)
    return ids


def export_hf(graphdef, params, processor, out_dir: Path, vocab_ids) -> None:
    """Writes the transformers-format model, the processor files and the task vocabulary (if any) to `out_dir`
    (process 0); parameters spread over several processes are gathered to the host first."""
    if jax.process_count() > 1:
        params = jax.tree.map(lambda a: multihost_utils.process_allgather(a, tiled=True), params)
    if jax.process_index() == 0:
        save_pretrained(nnx.merge(graphdef, params), out_dir)
        processor.save_pretrained(out_dir)
        if vocab_ids is not None:
            task_vocab.save(vocab_ids, out_dir)
    multihost_utils.sync_global_devices("exported")


def train(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
    """Runs (or resumes) the SFT run of `config` in `workdir`; returns the last logged scalars."""
    workdir = Path(workdir)
    mesh = train_mesh.mesh_from_config(config)
    rules = train_mesh.rules_from_config(config)
    train_mesh.check_batch_layout(config, mesh, rules)
    optimizer.check_optim(config.optim)
    compiler_options(config, mesh)  # raises on an unknown config.xla_cpu_scheduler
    if config.total_steps <= 0 and config.num_epochs <= 0:
        raise ValueError("set config.total_steps or config.num_epochs to a positive number")
    for key in ("checkpoint_every", "log_every"):
        if config[key] < 1:
            raise ValueError(f"config.{key}={config[key]!r}; it must be at least 1 (steps between two)")
    cfg = train_state.model_config(config)
    if jax.process_index() == 0:
        write_config(config, workdir)
    processor = data.make_processor(config, cfg)
    data_dir = data.dataset_dir(config, workdir)
    local_batch = config.batch_size // jax.process_count()
    steps_per_epoch = max(1, len(pipeline.host_source(config.data.name, "train", data_dir)) // local_batch)
    total_steps = config.total_steps if config.total_steps > 0 else config.num_epochs * steps_per_epoch
    vocab_ids = task_vocabulary(config, processor, data_dir, workdir, cfg.text.vocab_size)
    program = build_program(config, cfg, mesh, rules, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                            vocab_ids=vocab_ids)
    graphdef, batch_shardings = program.graphdef, program.batch_shardings

    iterator = data.sft_iterator(config, processor, data_dir, "train", train=True)
    ckpt = checkpoint.Checkpointer(workdir / "checkpoints", keep=config.keep_checkpoints,
                                   async_save=config.async_checkpointing)
    start = ckpt.latest_step()
    if start is None:
        start = 0
        state = train_state.init_train_state(config, cfg, program.tx, program.shardings, mesh, rules)
    else:
        state, data_state = ckpt.restore(start, program.abstract_state(config.seed), program.shardings)
        iterator.set_state(data_state)
        if jax.process_index() == 0:
            print(f"resumed from {ckpt.directory / str(start)}", flush=True)

    run_step = CompiledStep(program.train_step)
    writer = metrics.MetricWriter(workdir)
    bar = metrics.progress_bar(start, total_steps)
    scalars: dict = {}
    window = dict(steps=0, seconds=0.0, tokens=0.0)
    n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(program.abstract_params))
    model_flops = 6.0 * n_params / mesh.size  # per token and device

    def next_batch():
        return data.device_batch(next(iterator), batch_shardings, config.loss.chunk_size, program.vocab_lookup)

    try:
        batch = next_batch() if start < total_steps else None
        for n in range(start + 1, total_steps + 1):
            began = time.perf_counter()
            with jax.set_mesh(mesh):  # only around steps: a model built under a mesh reads axis names as mesh axes
                state, m = run_step(state, batch)
            data_state = iterator.get_state()  # the position right after this step's batch
            if n < total_steps:  # read the next batch while the device works
                batch = next_batch()
            m = jax.device_get(m)
            if not m["finite"]:
                ckpt.wait()
                raise NonFiniteLossError(
                    f"step {n}: loss {float(m['loss'])}, gradient norm {float(m['grad_norm'])}; stopped "
                    f"without applying it. The last good checkpoint is step {ckpt.latest_step()} in "
                    f"{ckpt.directory}")
            window = dict(steps=window["steps"] + 1, seconds=window["seconds"] + time.perf_counter() - began,
                          tokens=window["tokens"] + float(m["tokens"]))
            bar.update(1)
            if n % config.log_every == 0 or n == total_steps:
                scalars = _log_scalars(m, peak=config.peak_flops_per_device, model_flops=model_flops, **window)
                window = dict(steps=0, seconds=0.0, tokens=0.0)
                bar.set_postfix(loss=f"{scalars['loss']:.4f}", tok_s=f"{scalars['tokens_per_second']:.0f}")
                writer.write(n, scalars)
            if config.eval_every and n % config.eval_every == 0:
                with jax.set_mesh(mesh):
                    eval_loss = evaluate(program, state.params, config, processor, data_dir)
                writer.write(n, {"eval_loss": eval_loss})
            if config.sample_every and n % config.sample_every == 0:
                writer.write_text(n, "sample", sample_answer(graphdef, state.params, config, processor,
                                                             data_dir, vocab_ids))
            if n % config.checkpoint_every == 0 or n == total_steps:
                ckpt.save(n, state, data.gather_process_states(data_state))
        ckpt.wait()
        if config.export_hf:
            export_hf(graphdef, state.params, processor, workdir / "hf", vocab_ids)
    finally:
        bar.close()
        writer.close()
        ckpt.close()
        iterator.close()
    return scalars
