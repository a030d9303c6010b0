"""The sweep launcher (llavao1_jax/sweep.py; experiments/README.md): run a config's sweep points here, print their
command lines for SLURM or GNU parallel, or gather their results into one table.

    python experiments/sweep.py --module MODULE --config FILE[:ARG] --workdir BASE --run
    python experiments/sweep.py --module MODULE --config FILE --workdir BASE --print {slurm,parallel,plain}
    python experiments/sweep.py --module MODULE --config FILE --workdir BASE --gather
"""
import sys

from llavao1_jax.sweep import main

if __name__ == "__main__":
    sys.exit(main())
