"""The blocked exact attention against jax.nn.dot_product_attention (one block), for every blocking it can choose."""
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import llavao1_jax as lj
from hf_reference import hf_logits, make_batch, relative_error, saved_hf_model
from llavao1_jax.model import layers
from llavao1_jax.sharding import make_mesh

BLOCKED = np.finfo(np.float32).min


def set_blocks(monkeypatch, budget: int, split_batch: bool = True):
    """Sets how attention blocks its scores here; read when tracing, so cached traces are dropped."""
    monkeypatch.setitem(layers.ATTENTION_BLOCKS, jax.default_backend(), (budget, split_batch))
    jax.clear_caches()


@pytest.mark.parametrize("budget", [1 << 30, 40_000, 5_000, 1], ids=["one-block", "row-blocks", "query-chunks", "tiny"])
@pytest.mark.parametrize("split_batch", [True, False], ids=["rows", "whole-batch"])
@pytest.mark.parametrize("bias_kind", ["full", "keys", "none"])
@pytest.mark.parametrize("layout", [layers.PROJECTED, layers.CACHED], ids=["projected", "cached"])
def test_blocked_attention_is_exact(monkeypatch, budget, split_batch, bias_kind, layout):
    """K/V given in either layout (the projections' or the cache's) give the same attention."""
    set_blocks(monkeypatch, budget, split_batch)
    rng = np.random.default_rng(budget % 97)
    b, sq, sk, h, kv, d = 4, 37, 29, 6, 2, 8  # grouped heads; 37 queries split into uneven chunks (padding)
    q = jnp.asarray(rng.normal(size=(b, sq, h, d)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(b, sk, kv, d)), jnp.float32) for _ in range(2))
    shape = {"full": (b, 1, sq, sk), "keys": (b, 1, 1, sk)}.get(bias_kind)
    bias = None if shape is None else jnp.asarray(np.where(rng.random(shape) < 0.3, BLOCKED, 0.0), jnp.float32)
    expected = jax.nn.dot_product_attention(q, k, v, bias=bias, implementation="xla")
    k, v = layers.to_layout(k, "bskd", layout.k), layers.to_layout(v, "bskd", layout.v)
    got = jax.jit(layers.attention, static_argnums=(4, 5))(q, k, v, bias, "xla", layout)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_blocking_bounds_the_score_block(monkeypatch):
    """Under a 5 KB budget every matmul result of the traced computation (scores and outputs) fits the budget; one
    unblocked score array would be 5x larger."""
    budget = 5_000
    set_blocks(monkeypatch, budget)
    q = jnp.zeros((4, 37, 6, 8))
    k = v = jnp.zeros((4, 29, 2, 8))
    text = jax.jit(layers.attention).lower(q, k, v, None).as_text()
    results = re.findall(r"dot_general.*?-> tensor<([0-9x]+)xf32>", text)
    assert results, "no matmul found in the lowered attention"
    assert max(4 * math.prod(int(n) for n in r.split("x")) for r in results) <= budget
    assert 4 * 6 * 37 * 29 * 4 > 5 * budget


@pytest.fixture
def small_blocks(monkeypatch):
    """Attention in blocks of at most 4 KB everywhere (vision tower, self- and cross-attention)."""
    set_blocks(monkeypatch, 4096)
    yield
    monkeypatch.undo()
    jax.clear_caches()


def test_model_in_small_blocks_matches_transformers(tmp_path, small_blocks):
    hf_model, directory = saved_hf_model(tmp_path, seed=0)
    batch = make_batch(np.random.default_rng(1), [[1], [2], [7], [6]], 11, [[0], [3], [5], [1]])
    ours = lj.load_pretrained(directory)
    assert relative_error(ours(**batch), hf_logits(hf_model, batch)) < 1e-5


def test_blocks_spanning_the_batch_keep_it_sharded(monkeypatch):
    """The accelerator blocking (queries only) leaves a batch sharded over devices where it is: no gather."""
    set_blocks(monkeypatch, 5_000, split_batch=False)
    mesh = make_mesh(data=jax.device_count(), fsdp=1)
    shard = NamedSharding(mesh, P("data"))
    b = jax.device_count()
    q = jax.device_put(jnp.ones((b, 37, 6, 8)), shard)
    k = v = jax.device_put(jnp.ones((b, 29, 2, 8)), shard)
    compiled = jax.jit(layers.attention, out_shardings=shard).lower(q, k, v, None).compile().as_text()
    assert "while" in compiled, "the queries were not blocked"
    assert "all-gather" not in compiled and "all-to-all" not in compiled
