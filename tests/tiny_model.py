"""The tiny random model with the real Llama-3.2-Vision processor (tiles sized for it), as generation tests use it."""
import llavao1_jax as lj
from llavao1_jax.model import preset


def tiny_model_and_processor(seed: int = 0):
    """(model in the per-layer layout, its Generator, the packaged processor with the model's tile size)."""
    config = preset("tiny", scan_layers=False)
    model = lj.init_model(config, seed=seed)
    processor = lj.Processor.llama3_2_vision(tile_size=config.vision.image_size,
                                             max_image_tiles=config.vision.max_num_tiles)
    return model, lj.Generator(model), processor
