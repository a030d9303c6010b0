"""Orbax checkpoints of a run: the train state (model, optimiser, step, RNG) and every process's data-iterator
position, saved asynchronously, the last N kept; restoring checks every array against the current config first."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import jax
import orbax.checkpoint as ocp

from llavao1_jax.train.state import TrainState


class CheckpointMismatchError(ValueError):
    """The checkpoint's arrays do not match the train state of the current config."""


def _describe(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def check_compatible(saved_metadata, abstract_state: dict, directory: Path) -> None:
    """Raises CheckpointMismatchError naming the arrays whose presence, shape or dtype differ between a checkpoint's
    metadata and the abstract train state (up to five of them)."""
    saved = {_describe(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(saved_metadata)[0]}
    wanted = {_describe(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(abstract_state)[0]}
    problems = []
    for name in sorted(wanted.keys() | saved.keys()):
        if name not in saved:
            problems.append(f"array {name!r} is missing there")
        elif name not in wanted:
            problems.append(f"array {name!r} is there but not in this config's train state")
        elif (tuple(saved[name].shape) != tuple(wanted[name].shape)
              or jax.numpy.dtype(saved[name].dtype) != jax.numpy.dtype(wanted[name].dtype)):
            got, want = saved[name], wanted[name]
            problems.append(f"array {name!r} is {got.dtype}{list(got.shape)} there but {want.dtype}"
                            f"{list(want.shape)} in this config's train state")
    if problems:
        raise CheckpointMismatchError(f"checkpoint {directory} was written with another config: "
                                      + "; ".join(problems[:5])
                                      + (f"; and {len(problems) - 5} more" if len(problems) > 5 else ""))


class Checkpointer:
    """An orbax `CheckpointManager` over `directory` for (TrainState, per-process data states)."""

    def __init__(self, directory: str | Path, *, keep: int, async_save: bool = True):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
        handlers = {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler()}
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def save(self, step: int, state: TrainState, data_states: dict[str, dict]) -> None:
        """Starts saving (asynchronously unless disabled); `data_states` from `data.gather_process_states`."""
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state._asdict()),
                                                       data=ocp.args.JsonSave(data_states)))

    def restore(self, step: int, abstract_state: TrainState, shardings: TrainState) -> tuple[TrainState, dict]:
        """The train state at `step`, each array read into its sharding, and this process's data state."""
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                              abstract_state._asdict(), shardings._asdict())
        metadata = self.manager.item_metadata(step)["state"]
        check_compatible(metadata, target, self.directory / str(step))
        restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                                      data=ocp.args.JsonRestore()))
        return TrainState(**restored["state"]), restored["data"][f"process_{jax.process_index()}"]

    def wait(self) -> None:
        """Blocks until pending saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
