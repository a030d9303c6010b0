"""The small reasoner: an Mllama trained from scratch on the synthetic set, then evaluated by search method.

* `job.run(config, workdir)`: the main job (`python -m llavao1_jax.main`): build the data, train, evaluate every
  method of `config.methods` on the held-out split, write results.json, the plot and the table. Every phase resumes.
* `baseline.py`: the image-blind baseline (the majority answer per question type on the training split).
* `evaluation.py`: one method over the held-out split through the evaluation runner, and its figures.
* `report.py`: results.json, the printed table, the accuracy plot.
"""
