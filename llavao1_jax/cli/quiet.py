"""Quiet start-up for the command lines: library log lines below WARNING are hidden unless asked for."""
from absl import flags, logging


def quiet_library_logs() -> None:
    """Shows log lines from WARNING up unless `--verbosity` was given. absl programs log at INFO by default, which
    prints every library's INFO lines, such as JAX's probe for a TPU backend on a CPU-only machine."""
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
