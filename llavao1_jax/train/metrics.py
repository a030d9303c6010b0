"""Run feedback: metrics as JSON lines and TensorBoard events (process 0 only), and a progress bar."""
from __future__ import annotations

import json
from pathlib import Path

import jax
from tqdm import tqdm


class MetricWriter:
    """Appends one JSON object per logged step to `workdir/metrics.jsonl` and writes the same scalars as
    TensorBoard events (tensorboardX) under `workdir/tensorboard`; other processes write nothing."""

    def __init__(self, workdir: str | Path):
        self.active = jax.process_index() == 0
        if not self.active:
            return
        from tensorboardX import SummaryWriter
        self.path = Path(workdir) / "metrics.jsonl"
        self.file = self.path.open("a")
        self.tensorboard = SummaryWriter(str(Path(workdir) / "tensorboard"))

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.active:
            return
        self.file.write(json.dumps({"step": step, **scalars}) + "\n")
        self.file.flush()
        for name, value in scalars.items():
            self.tensorboard.add_scalar(name, value, step)

    def write_text(self, step: int, name: str, text: str) -> None:
        """A text entry (e.g. a sample generation) in TensorBoard and the JSON lines."""
        if not self.active:
            return
        self.file.write(json.dumps({"step": step, name: text}) + "\n")
        self.file.flush()
        self.tensorboard.add_text(name, text, step)

    def close(self) -> None:
        if self.active:
            self.file.close()
            self.tensorboard.close()


def progress_bar(start: int, total: int) -> tqdm:
    """The loop's progress bar (steps/s and ETA from tqdm; loss and tokens/s as postfix), on process 0 only."""
    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, disable=jax.process_index() != 0)
