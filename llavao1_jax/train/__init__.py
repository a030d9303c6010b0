"""The sharded SFT trainer (`python -m llavao1_jax.train --config configs/sft_tiny.py --workdir DIR`).

One module per job: `mesh` (mesh, sharding rules, batch-layout checks), `optimizer` (the optax chain),
`loss` (supervised-only chunked cross-entropy), `state` (the train state, sharded creation), `step` (jitted train
and eval steps), `data` (dataset, iterator, global device batches), `checkpoint` (orbax, exact resume),
`metrics` (JSON lines, TensorBoard, progress bar), `loop` (`train(config, workdir)`), `plan` (the capacity planner,
`python -m llavao1_jax.train.plan`).
"""
