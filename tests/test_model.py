"""Model checks that need no reference: shapes of the real sizes, sharding, remat, config I/O, input validation."""
import json
import re
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors import safe_open

import llavao1_jax as lj
from hf_reference import HF_CONFIG, hf_logits, make_batch, make_hf_model, relative_error
from llavao1_jax.model import MllamaConfig, preset, relayout
from llavao1_jax.model.text import block_runs, layer_period
from llavao1_jax.sharding import make_mesh
from llavao1_jax.train.data import random_batch


def param_count(config) -> int:
    abstract = nnx.eval_shape(lambda: lj.Mllama(config, rngs=nnx.Rngs(0)))
    return sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


def mllama_parameter_count(config) -> int:
    """Parameters of an Mllama model from its sizes, written out from transformers' module shapes."""
    v, t = config.vision, config.text
    d, i, patches = v.hidden_size, v.intermediate_size, (v.image_size // v.patch_size) ** 2 + 1
    ratios, tiles = len(v.supported_aspect_ratios) + 1, v.max_num_tiles
    vision_layer = 4 * d * d + (d * i + i) + (i * d + d) + 2 * 2 * d  # attention, MLP with biases, two LayerNorms
    vision = (v.num_channels * v.patch_size ** 2 * d + d  # patch embedding, class embedding
              + patches * d + 1 + ratios * tiles * patches * d  # gated positional embedding (+ its tile part)
              + 2 * (ratios * tiles * d + 1)  # pre- and post-tile positional embeddings with gates
              + 2 * 2 * d  # layernorm_pre, layernorm_post
              + v.num_hidden_layers * vision_layer + v.num_global_layers * (vision_layer + 2))
    h, kv, ff = t.hidden_size, t.num_key_value_heads * t.head_dim, t.intermediate_size
    self_layer = 2 * h * h + 2 * h * kv + 3 * h * ff + 2 * h
    cross_layer = self_layer + 2 * t.head_dim + 2  # q/k norms, attention and MLP gates
    cross = len([i for i in t.cross_attention_layers if i < t.num_hidden_layers])
    text = ((t.vocab_size + 8) * h  # embeddings (8 extra image rows)
            + (t.num_hidden_layers - cross) * self_layer + cross * cross_layer + h + h * t.vocab_size)
    return vision + v.vision_output_dim * h + h + text


@pytest.mark.parametrize("name, count", [("llama-3.2-11b-vision", 10_670_220_835), ("mid", 169_226_507)])
def test_parameter_counts(name, count):
    assert param_count(preset(name)) == mllama_parameter_count(preset(name)) == count


def test_mid_parameter_count_matches_transformers():
    """transformers' MllamaForConditionalGeneration built (on the meta device) from the mid preset's config.json."""
    import torch
    from transformers import MllamaConfig as HFMllamaConfig, MllamaForConditionalGeneration

    hf_dict = preset("mid").to_hf_dict()
    with torch.device("meta"):
        hf_model = MllamaForConditionalGeneration(HFMllamaConfig(**{k: v for k, v in hf_dict.items()
                                                                   if k != "model_type"}))
    assert sum(p.numel() for p in hf_model.parameters()) == 169_226_507


def test_layer_blocks_of_real_configs():
    assert layer_period(preset("llama-3.2-11b-vision").text) == 5
    assert block_runs(preset("llama-3.2-11b-vision").text) == [("self", 3), ("cross", 1), ("self", 1)]
    assert block_runs(preset("llama-3.2-90b-vision").text) == [("self", 3), ("cross", 1), ("self", 1)]
    assert layer_period(preset("tiny").text) == 4  # one cross layer at index 1 of 4


def test_11b_forward_traces_one_block(monkeypatch):
    """The 40-layer decoder is scanned: tracing the 11B forward builds each layer kind's body a bounded number of
    times, independent of depth."""
    from llavao1_jax.model import text

    calls = {"self": 0, "cross": 0}
    for cls, kind in ((text.SelfAttentionLayer, "self"), (text.CrossAttentionLayer, "cross")):
        original = cls.__call__

        def counting(self, *a, _orig=original, _kind=kind, **k):
            calls[_kind] += 1
            return _orig(self, *a, **k)

        monkeypatch.setattr(cls, "__call__", counting)
    cfg = preset("llama-3.2-11b-vision")
    abstract = nnx.eval_shape(lambda: lj.Mllama(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    ids = jax.ShapeDtypeStruct((1, 16), jnp.int32)
    pv = jax.ShapeDtypeStruct((1, 1, 4, 3, 560, 560), jnp.float32)
    ar = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    arm = jax.ShapeDtypeStruct((1, 1, 4), jnp.int32)
    cm = jax.ShapeDtypeStruct((1, 16, 1, 4), jnp.int32)
    out = jax.eval_shape(lambda s, *a: nnx.merge(graphdef, s).forward(a[0], None, *a[1:]), state, ids, pv, ar, arm, cm)
    assert out.shape == (1, 16, 128256)
    assert calls == {"self": 1, "cross": 1}


def test_config_json_round_trip_and_5x_layout():
    cfg = MllamaConfig.from_hf_dict(HF_CONFIG)
    assert MllamaConfig.from_hf_dict(cfg.to_hf_dict()) == cfg
    d = json.loads(json.dumps(HF_CONFIG))
    d["text_config"]["rope_parameters"] = dict(d["text_config"].pop("rope_scaling"), rope_theta=123.0)
    d["vision_config"]["num_attention_heads"] = d["vision_config"].pop("attention_heads")
    five = MllamaConfig.from_hf_dict(d)
    assert five.text.rope_theta == 123.0 and five.vision.num_attention_heads == 4
    assert five.text.rope_type == "llama3" and five.text.rope_original_max_position_embeddings == 64
    per_layer = MllamaConfig.from_hf_dict(HF_CONFIG, scan_layers=False)
    assert not per_layer.scan_layers and per_layer.to_hf_dict() == cfg.to_hf_dict()  # a runtime knob, not saved
    assert not preset("tiny", scan_layers=False).scan_layers


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        MllamaConfig.from_json_file(tmp_path / "config.json")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        MllamaConfig.from_json_file(tmp_path / "config.json")
    bad = json.loads(json.dumps(HF_CONFIG))
    bad["vision_config"]["vision_output_dim"] = 40
    with pytest.raises(ValueError, match="vision_output_dim"):
        MllamaConfig.from_hf_dict(bad)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf_tiny_model_tests")
    make_hf_model(seed=1).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model(checkpoint):
    return lj.load_pretrained(checkpoint)


def test_sharded_load_matches_single_device(checkpoint, model):
    mesh = make_mesh(fsdp=4, tensor=2)
    sharded = lj.load_pretrained(checkpoint, mesh=mesh)
    q = sharded.language_model.self_layers.self_attn.q_proj.kernel[...]
    assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    assert len(q.addressable_shards) == 8 and q.addressable_shards[0].data.shape == (8, 8, 16)
    for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(sharded))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    batch = make_batch(np.random.default_rng(0), [[6], [2]], 8, [[1], [0]])
    np.testing.assert_allclose(np.asarray(sharded(**batch)), np.asarray(model(**batch)), rtol=1e-5, atol=1e-6)


class CountingSafetensors:
    """A safetensors file handle that adds the bytes of every array it returns to `counts[file name]`."""

    def __init__(self, path, counts: dict, **kwargs):
        self.file, self.name, self.counts = safe_open(path, **kwargs), Path(path).name, counts

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.file.__exit__(*exc)

    def keys(self):
        return self.file.keys()

    def _count(self, array: np.ndarray) -> np.ndarray:
        self.counts[self.name] = self.counts.get(self.name, 0) + array.nbytes
        return array

    def get_tensor(self, name):
        return self._count(self.file.get_tensor(name))

    def get_slice(self, name):
        tensor, count = self.file.get_slice(name), self._count
        return type("CountingSlice", (), {"get_shape": lambda _: tensor.get_shape(),
                                         "__getitem__": lambda _, index: count(tensor[index])})()


def checkpoint_bytes(directory: Path) -> dict[str, int]:
    """The tensor bytes of every safetensors file in `directory`."""
    sizes = {}
    for path in directory.glob("*.safetensors"):
        with safe_open(path, "numpy") as f:
            sizes[path.name] = sum(f.get_slice(k)[:].nbytes for k in f.keys())
    return sizes


def test_sharded_load_reads_only_each_devices_shard(checkpoint, monkeypatch):
    """Loading onto an fsdp=4, tensor=2 mesh, every device reads from the file exactly the bytes of its own shards
    (a fully replicated parameter is read once): about one checkpoint in all, plus the copies the sharding rules ask
    for (the vision tower is sharded over fsdp only, so its elements are read twice). Catches whole-tensor reads (8x
    the checkpoint)."""
    from llavao1_jax.model import hf_checkpoint

    counts = {}
    monkeypatch.setattr(hf_checkpoint, "safe_open", lambda path, **kw: CountingSafetensors(path, counts, **kw))
    model = lj.load_pretrained(checkpoint, mesh=make_mesh(fsdp=4, tensor=2))
    shards = sum(p.nbytes if p.sharding.is_fully_replicated else sum(s.data.nbytes for s in p.addressable_shards)
                 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    total = sum(checkpoint_bytes(checkpoint).values())
    assert sum(counts.values()) == shards < 2 * total


def params(model) -> list:
    return [np.asarray(a) for a in jax.tree.leaves(nnx.state(model, nnx.Param))]


def test_multi_file_checkpoints_both_ways(checkpoint, model, tmp_path):
    """The Hub's 11B layout (several safetensors files and model.safetensors.index.json) both ways: ours splits at
    `max_shard_bytes` and transformers loads it with the same logits; we load transformers' split bit-identically."""
    from transformers import MllamaForConditionalGeneration

    written = lj.save_pretrained(model, tmp_path / "ours", max_shard_bytes=600_000)  # the checkpoint is 916 KB
    files = checkpoint_bytes(written)
    index = json.loads((written / "model.safetensors.index.json").read_text())
    assert len(files) == 3 and max(files.values()) <= 600_000
    assert sorted(set(index["weight_map"].values())) == sorted(files)
    assert index["metadata"]["total_size"] == sum(files.values()) == sum(checkpoint_bytes(checkpoint).values())
    hf_model = MllamaForConditionalGeneration.from_pretrained(written, attn_implementation="eager").float()
    batch = make_batch(np.random.default_rng(4), [[6], [2]], 8, [[1], [0]])
    assert relative_error(model(**batch), hf_logits(hf_model, batch)) < 1e-5
    hf_model.save_pretrained(tmp_path / "hf", max_shard_size="300KB")
    assert len(checkpoint_bytes(tmp_path / "hf")) > 2 and (tmp_path / "hf" / "model.safetensors.index.json").exists()
    for a, b in zip(params(model), params(lj.load_pretrained(tmp_path / "hf"))):
        np.testing.assert_array_equal(a, b)


def test_relayout_is_bit_identical_both_ways_and_gives_the_same_logits(model):
    per_layer = relayout(model, scan_layers=False)
    assert not per_layer.config.scan_layers and relayout(per_layer, scan_layers=False) is per_layer
    layers = per_layer.language_model.layers
    assert [type(layer).__name__ for layer in layers] == ["SelfAttentionLayer"] * 3 + ["CrossAttentionLayer"] + [
        "SelfAttentionLayer"] * 4 + ["CrossAttentionLayer", "SelfAttentionLayer"]  # HF's layers.{i}, cross at 3, 8
    stacked = model.language_model
    np.testing.assert_array_equal(layers[4].mlp.up_proj.kernel[...], stacked.self_layers.mlp.up_proj.kernel[...][3])
    np.testing.assert_array_equal(layers[8].k_norm.weight[...], stacked.cross_layers.k_norm.weight[...][1])
    for a, b in zip(params(model), params(relayout(per_layer, scan_layers=True))):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    batch = make_batch(np.random.default_rng(3), [[6], [2]], 8, [[1], [0]])
    text = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    for inputs in (batch, text):
        np.testing.assert_allclose(np.asarray(per_layer(**inputs)), np.asarray(model(**inputs)), rtol=0, atol=1e-6)


def test_per_layer_load_and_init_are_sharded(checkpoint, model):
    mesh = make_mesh(fsdp=4, tensor=2)
    sharded = lj.load_pretrained(checkpoint, mesh=mesh, scan_layers=False)
    q = sharded.language_model.layers[0].self_attn.q_proj.kernel[...]
    assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    assert q.addressable_shards[0].data.shape == (8, 16)
    for a, b in zip(params(relayout(model, scan_layers=False)), params(sharded)):
        np.testing.assert_array_equal(a, b)
    back = relayout(sharded, scan_layers=True)
    assert back.language_model.self_layers.self_attn.q_proj.kernel[...].sharding.spec == jax.sharding.PartitionSpec(
        None, "fsdp", "tensor")
    init = lj.init_model(preset("tiny", scan_layers=False), seed=3, mesh=mesh)
    q = init.language_model.layers[1].cross_attn.q_proj.kernel[...]  # tiny: cross-attention layer at 1
    assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor") and len(q.addressable_shards) == 8


@pytest.mark.parametrize("scan_layers", [True, False], ids=["scanned", "per_layer"])
def test_remat_gives_same_loss_and_gradients(model, scan_layers):
    """Full rematerialisation changes neither the loss nor the gradients (one program computes both, so each layout
    compiles once)."""
    batch = make_batch(np.random.default_rng(1), [[6]], 8, [[1]])
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    state = nnx.state(relayout(model, scan_layers=scan_layers))
    graphdefs = [nnx.graphdef(nnx.eval_shape(lambda: lj.Mllama(model.config.replace(remat=remat,
                                                                                  scan_layers=scan_layers),
                                                             rngs=nnx.Rngs(0)))) for remat in ("none", "full")]

    def loss(graphdef, s):
        return jnp.mean(nnx.merge(graphdef, s).forward(**batch)[..., :5] ** 2)

    (l0, g0), (l1, g1) = jax.jit(lambda s: [jax.value_and_grad(partial(loss, g))(s) for g in graphdefs])(state)
    np.testing.assert_allclose(l0, l1, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(np.abs(np.asarray(b)).max()) + 1e-12)
    assert any(np.abs(np.asarray(g)).max() > 0 for g in jax.tree.leaves(g0))


def test_load_errors_name_the_tensor(checkpoint, tmp_path):
    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(checkpoint / "model.safetensors", "numpy") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    (tmp_path / "config.json").write_text((checkpoint / "config.json").read_text())

    def write(ts):
        save_file(ts, tmp_path / "model.safetensors", metadata={"format": "pt"})

    write({k: v for k, v in tensors.items() if k != "multi_modal_projector.bias"})
    with pytest.raises(ValueError, match="missing 1 tensor.*multi_modal_projector.bias"):
        lj.load_pretrained(tmp_path)
    write(dict(tensors, **{"vision_model.extra.weight": np.zeros(3, np.float32)}))
    with pytest.raises(ValueError, match="unexpected 1 tensor.*vision_model.extra.weight"):
        lj.load_pretrained(tmp_path)
    write(dict(tensors, **{"multi_modal_projector.weight": np.zeros((32, 7), np.float32)}))
    with pytest.raises(ValueError, match=r"multi_modal_projector.weight has shape \(32, 7\)"):
        lj.load_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        lj.load_pretrained(tmp_path / "nowhere")


@pytest.mark.parametrize("change, message", [
    (lambda b: dict(b, pixel_values=b["pixel_values"][0]), "pixel_values must be"),
    (lambda b: dict(b, cross_attention_mask=np.concatenate([b["cross_attention_mask"]] * 2, axis=2)),
     "names 2 images but pixel_values holds 1"),
    (lambda b: dict(b, aspect_ratio_ids=np.zeros((2, 2), np.int64)), "aspect_ratio_ids must be"),
    (lambda b: dict(b, input_ids=b["input_ids"] + 200), "out of vocabulary"),
    (lambda b: dict(b, input_ids=-b["input_ids"]), "out of vocabulary"),
    (lambda b: dict(b, input_ids=b["input_ids"].astype(np.float32)), "must be integers"),
    (lambda b: dict(b, attention_mask=b["attention_mask"][:, :3]), "attention_mask must have the shape"),
    (lambda b: dict(b, pixel_values=b["pixel_values"][..., :10, :10]), "does not fit this model"),
    (lambda b: {k: v for k, v in b.items() if k != "aspect_ratio_ids"}, "aspect_ratio_ids is required"),
    (lambda b: {k: v for k, v in b.items() if k != "pixel_values"}, "given without pixel_values"),
])
def test_bad_input_fails_before_compiling(model, change, message, monkeypatch):
    from llavao1_jax.model import mllama

    def no_compile(*a, **k):
        raise AssertionError("compiled despite bad input")

    monkeypatch.setattr(mllama, "_jitted_forward", no_compile)
    batch = make_batch(np.random.default_rng(2), [[6], [1]], 6, [[0], [0]])
    with pytest.raises(ValueError, match=message):
        model(**change(batch))


def test_init_model_is_sharded_and_runs():
    mesh = make_mesh(fsdp=2, tensor=4)
    cfg = preset("tiny")
    m = lj.init_model(cfg, seed=3, mesh=mesh)
    emb = m.language_model.embed_tokens[...]
    assert emb.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    assert float(jnp.std(emb)) == pytest.approx(0.02, rel=0.05)
    ids = np.array([[1, 2, 3, 128256, 5]])
    pv = np.random.default_rng(0).normal(size=(1, 1, 4, 3, 28, 28)).astype(np.float32)
    logits = m(input_ids=ids, pixel_values=pv, aspect_ratio_ids=np.array([[6]]),
               aspect_ratio_mask=np.ones((1, 1, 4), np.int64), cross_attention_mask=np.ones((1, 5, 1, 4), np.int64))
    assert logits.shape == (1, 5, cfg.text.vocab_size) and np.isfinite(np.asarray(logits)).all()


def test_hidden_states_are_constrained_at_layer_boundaries():
    """With `activation_rules` the lowered forward pins the hidden states after the embedding and after each layer
    (per-layer layout: one constraint each, 1 + 4) to what the rules make of ("batch", "length", "embed"); without
    rules, or with no mesh set, nothing is pinned."""
    rules = (("batch", "data"), ("embed", "tensor"), ("length", None))
    mesh = make_mesh(data=2, fsdp=1, tensor=4)

    def constraints(cfg, mesh):
        graphdef, state = nnx.split(nnx.eval_shape(lambda: lj.Mllama(cfg, rngs=nnx.Rngs(0))))
        batch = {k: v for k, v in random_batch(cfg, 8, 16).items() if k != "labels"}
        lower = lambda: jax.jit(lambda s, b: nnx.merge(graphdef, s).hidden_states(**b)).lower(state, batch).as_text()
        if mesh is None:
            text = lower()
        else:
            with jax.set_mesh(mesh):
                text = lower()
        return re.findall(r"sdy.sharding_constraint \S+ <@mesh, (\[.*?\])> : tensor<8x16x32xf32>", text)

    cfg = preset("tiny", scan_layers=False)
    assert constraints(cfg.replace(activation_rules=rules), mesh) == ['[{"data"}, {}, {"tensor"}]'] * 5
    assert constraints(cfg, mesh) == []
    assert constraints(cfg.replace(activation_rules=rules), None) == []
