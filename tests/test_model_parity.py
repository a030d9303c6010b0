"""Logits of llavao1_jax against transformers (eager, float32, CPU) on the same tiny random checkpoint."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import llavao1_jax as lj
from hf_reference import WIDE_CONFIG, hf_logits, make_batch, relative_error, saved_hf_model
from llavao1_jax.model import layers, preset, relayout

TOL = 1e-5


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return saved_hf_model(tmp_path_factory.mktemp("hf_tiny"), seed=0)


@pytest.fixture(scope="module", params=[True, False], ids=["scanned", "per_layer"])
def ours(checkpoint, request):
    """The checkpoint loaded in either text layout (`scan_layers`)."""
    return lj.load_pretrained(checkpoint[1], scan_layers=request.param)


@pytest.mark.parametrize("aspect_ratio_id", [1, 2, 3, 6], ids=["1tile", "2tiles", "3tiles", "4tiles"])
def test_one_image_each_tile_count(checkpoint, ours, aspect_ratio_id):
    batch = make_batch(np.random.default_rng(aspect_ratio_id), [[aspect_ratio_id]], 9, [[0]])
    assert relative_error(ours(**batch), hf_logits(checkpoint[0], batch)) < TOL


def test_batch_of_tile_counts_and_text_before_image(checkpoint, ours):
    batch = make_batch(np.random.default_rng(1), [[1], [2], [7], [6]], 11, [[0], [3], [5], [1]])
    assert relative_error(ours(**batch), hf_logits(checkpoint[0], batch)) < TOL


def test_two_images_per_sample(checkpoint, ours):
    # second sample has one real image and one padding image (aspect ratio id 0)
    batch = make_batch(np.random.default_rng(2), [[6, 2], [3, 0]], 12, [[1, 6], [2, -1]])
    assert batch["cross_attention_mask"][0, 7, 1].sum() == 2 and batch["cross_attention_mask"][0, 7, 0].sum() == 0
    assert relative_error(ours(**batch), hf_logits(checkpoint[0], batch)) < TOL


def test_left_padded_batch(checkpoint, ours):
    batch = make_batch(np.random.default_rng(3), [[6], [5]], 10, [[3], [1]], left_pad=[3, 0])
    mask = batch["attention_mask"]
    assert relative_error(ours(**batch), hf_logits(checkpoint[0], batch), mask) < TOL


def test_text_only(checkpoint, ours):
    rng = np.random.default_rng(4)
    batch = dict(input_ids=rng.integers(3, 99, (2, 8)), attention_mask=np.ones((2, 8), np.int64))
    assert relative_error(ours(**batch), hf_logits(checkpoint[0], batch)) < TOL


def test_image_changes_logits(ours):
    """Guards the parity tests against a model that ignores the image (zero gates)."""
    rng = np.random.default_rng(5)
    batch = make_batch(rng, [[6]], 8, [[1]])
    other = dict(batch, pixel_values=batch["pixel_values"] + rng.normal(size=batch["pixel_values"].shape))
    assert np.abs(np.asarray(ours(**batch)) - np.asarray(ours(**other)))[:, 2:].max() > 1e-3


def test_meta_row_mask_hides_the_image_from_rows_before_it(checkpoint, ours):
    """Meta's reference zeroes cross-attention for rows that see no image; transformers lets them see it (7.2)."""
    meta = lj.load_pretrained(checkpoint[1], meta_cross_attention_row_mask=True, scan_layers=ours.config.scan_layers)
    rng = np.random.default_rng(6)
    batch = make_batch(rng, [[6]], 8, [[3]])
    other = dict(batch, pixel_values=batch["pixel_values"] + rng.normal(size=batch["pixel_values"].shape))
    np.testing.assert_array_equal(np.asarray(meta(**batch))[:, :3], np.asarray(meta(**other))[:, :3])
    assert np.abs(np.asarray(ours(**batch))[:, :3] - np.asarray(ours(**other))[:, :3]).max() > 1e-5
    assert np.abs(np.asarray(meta(**batch))[:, 3:] - np.asarray(meta(**other))[:, 3:]).max() > 1e-5


def test_round_trip_through_transformers(checkpoint, ours, tmp_path):
    from transformers import MllamaForConditionalGeneration

    lj.save_pretrained(ours, tmp_path)
    reloaded_hf = MllamaForConditionalGeneration.from_pretrained(tmp_path, attn_implementation="eager").float()
    batch = make_batch(np.random.default_rng(7), [[6], [3]], 9, [[0], [2]])
    assert relative_error(ours(**batch), hf_logits(reloaded_hf, batch)) < TOL
    again = lj.load_pretrained(tmp_path, scan_layers=ours.config.scan_layers)
    for a, b in zip(jax.tree.leaves(nnx.state(ours, nnx.Param)), jax.tree.leaves(nnx.state(again, nnx.Param))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the exported tensors carry exactly the names and shapes transformers saved
    from safetensors import safe_open
    with safe_open(tmp_path / "model.safetensors", "numpy") as f, \
            safe_open(checkpoint[1] / "model.safetensors", "numpy") as g:
        assert sorted(f.keys()) == sorted(g.keys())
        assert all(f.get_slice(k).get_shape() == g.get_slice(k).get_shape() for k in f.keys())


def test_loads_transformers_5_names_and_config(checkpoint, ours, tmp_path):
    """transformers >= 4.52 / 5.x tensor names and the 5.x config layout (rope_parameters, num_attention_heads)."""
    from safetensors.numpy import save_file
    from safetensors import safe_open

    renames = {"language_model.model.": "model.language_model.", "vision_model.": "model.vision_model.",
               "multi_modal_projector.": "model.multi_modal_projector.", "language_model.lm_head.": "lm_head."}
    tensors = {}
    with safe_open(checkpoint[1] / "model.safetensors", "numpy") as f:
        for k in f.keys():
            new = next((n + k[len(o):] for o, n in renames.items() if k.startswith(o)), k)
            tensors[new] = f.get_tensor(k)
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((checkpoint[1] / "config.json").read_text())
    text, vision = cfg["text_config"], cfg["vision_config"]
    text["rope_parameters"] = dict(text.pop("rope_scaling"), rope_theta=text.pop("rope_theta"))
    vision["num_attention_heads"] = vision.pop("attention_heads")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    batch = make_batch(np.random.default_rng(8), [[6]], 7, [[0]])
    reloaded = lj.load_pretrained(tmp_path, scan_layers=ours.config.scan_layers)
    np.testing.assert_array_equal(np.asarray(reloaded(**batch)), np.asarray(ours(**batch)))


def rms_error(ours, ref) -> float:
    """Root-mean-square error relative to the reference's root-mean-square."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.sqrt(np.mean((ours - ref) ** 2) / np.mean(ref ** 2)))


def jaxpr_equations(jaxpr):
    """Every equation of `jaxpr` and of the jaxprs inside it (scan, while, pjit and custom-derivative bodies)."""
    from jax.extend import core

    for eqn in jaxpr.eqns:
        yield eqn
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else [param]:
                if isinstance(sub, core.ClosedJaxpr):
                    yield from jaxpr_equations(sub.jaxpr)
                elif isinstance(sub, core.Jaxpr):
                    yield from jaxpr_equations(sub)


def test_bfloat16_forward_is_as_close_to_float32_as_transformers(tmp_path):
    """A bfloat16 model keeps every parameter in bfloat16 and computes softmax (`exp`) and RMSNorm / LayerNorm
    (`rsqrt`) on float32 inputs, in both text layouts (read from the traced program: catches softmax computed in
    bf16 and RMSNorm without its f32 upcast, which move the logits too little to see). Its logits are as close to
    the float32 reference as transformers' own bfloat16 model on the same weights (within 25%)."""
    import torch

    hf_model, directory = saved_hf_model(tmp_path, seed=0, config=WIDE_CONFIG)
    batch = make_batch(np.random.default_rng(9), [[6], [2]], 32, [[0], [4]])
    ref = hf_logits(hf_model, batch)
    hf_error = rms_error(hf_logits(hf_model.to(torch.bfloat16), batch), ref)
    bf16 = lj.load_pretrained(directory, dtype="bfloat16")
    assert {leaf.dtype for leaf in jax.tree.leaves(nnx.state(bf16, nnx.Param))} == {np.dtype("bfloat16")}
    logits = bf16(**batch)
    assert logits.dtype == np.float32
    assert 5e-3 < rms_error(logits, ref) < 1.25 * hf_error
    inputs = {k: jnp.asarray(v) for k, v in batch.items()}
    for model in (bf16, relayout(bf16, scan_layers=False)):
        graphdef, state = nnx.split(model)
        traced = jax.make_jaxpr(lambda s, x: nnx.merge(graphdef, s).forward(**x))(state, inputs)
        read = {"exp": [], "rsqrt": []}
        for eqn in jaxpr_equations(traced.jaxpr):
            if eqn.primitive.name in read:
                read[eqn.primitive.name].append(eqn.invars[0].aval.dtype)
        assert read["exp"] and read["rsqrt"]
        assert set(read["exp"]) == set(read["rsqrt"]) == {np.dtype("float32")}, read


def llama3_wavelengths_by_band(text) -> tuple[int, int, int]:
    """How many RoPE wavelengths of `text` (a TextConfig) fall below, inside and above llama3's smoothed band."""
    wavelengths = 2 * np.pi * text.rope_theta ** (np.arange(0, text.head_dim, 2) / text.head_dim)
    low = text.rope_original_max_position_embeddings / text.rope_high_freq_factor
    high = text.rope_original_max_position_embeddings / text.rope_low_freq_factor
    return int((wavelengths < low).sum()), int(((wavelengths >= low) & (wavelengths <= high)).sum()), int(
        (wavelengths > high).sum())


def test_parity_config_exercises_every_rope_band(ours):
    """The parity tests above see llama3 RoPE's smoothing (they fail when `smooth` and `1 - smooth` are swapped in
    `layers.rope_inv_freq`) because the checkpoint's wavelengths fall in each of the three bands."""
    assert llama3_wavelengths_by_band(ours.config.text) == (1, 2, 1)


def test_llama3_inverse_frequencies_match_transformers_on_the_11b_config():
    """The 11B model's inverse RoPE frequencies equal transformers' llama3 initialisation; 6 of its 64 wavelengths lie
    in the smoothed band. Catches swapped `smooth` / `1 - smooth` in `layers.rope_inv_freq`."""
    from transformers.models.mllama.configuration_mllama import MllamaTextConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = preset("llama-3.2-11b-vision")
    text = config.text
    assert llama3_wavelengths_by_band(text) == (29, 6, 29)
    hf_text = MllamaTextConfig(**config.to_hf_dict()["text_config"])
    expected, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_text, "cpu")
    got = layers.rope_inv_freq(text.head_dim, text.rope_theta, text.rope_type, text.rope_factor,
                               text.rope_low_freq_factor, text.rope_high_freq_factor,
                               text.rope_original_max_position_embeddings)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-6, atol=0)
