"""Command lines (`python -m llavao1_jax.cli.generate`, or the `llavao1-generate` console script). They live here so
that no module shadows a public function of the package (`lj.generate`)."""
