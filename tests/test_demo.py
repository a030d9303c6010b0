"""The README's main job runs end to end on its embedded default config (made smaller)."""
from configs.demo import get_config
from llavao1_jax import demo


def test_demo_runs_and_round_trips(tmp_path):
    config = get_config("problems=2")
    config.max_new_tokens = 4
    config.workdir = str(tmp_path)
    figures = demo.run(config)
    assert figures["round_trip"] is True
    assert figures["logits_shape"][0] == 2 and figures["logits_shape"][2] == 128256
    assert (tmp_path / "config.json").exists()
