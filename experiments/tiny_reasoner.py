"""The main job as an experiment script: the same run as `python -m llavao1_jax.main`, driven by
configs/tiny_reasoner.py, writing results.json, the table and the plot into its workdir.

    python experiments/tiny_reasoner.py --workdir runs/tiny_reasoner [--config configs/tiny_reasoner.py:steps=600]
"""
from llavao1_jax.main import cli

if __name__ == "__main__":
    cli()
