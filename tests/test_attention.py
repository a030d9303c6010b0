"""The blocked exact attention against jax.nn.dot_product_attention (one block), for every blocking it can choose."""
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

import llavao1_jax as lj
from hf_reference import hf_logits, make_batch, relative_error, saved_hf_model
from llavao1_jax.model import layers
from llavao1_jax.sharding import make_mesh

BLOCKED = np.finfo(np.float32).min


# (block_bytes, split_batch) -> the blocking `attention` picks for the shapes of `test_blocked_attention_is_exact`
# (batch 4, 6 heads, 37 queries, 29 keys: 25,752 bytes of scores per batch row).
BLOCKINGS = {
    "one-block": (1 << 30, True),  # the whole [B, H, Sq, Sk] at once (split_batch has no effect)
    "row-blocks": (40_000, True),  # one batch row per block, all queries
    "rows-query-chunks": (5_000, True),  # one row per block, 6 chunks of 7 queries (5 padded)
    "rows-tiny": (1, True),  # one row and one query per block
    "batch-query-chunks": (40_000, False),  # the whole batch, 3 chunks of 13 queries (2 padded)
    "batch-small-chunks": (5_000, False),  # the whole batch, 21 chunks of 2 queries
    "batch-tiny": (1, False),  # the whole batch, one query per block
}


@pytest.mark.parametrize("blocking", BLOCKINGS.values(), ids=BLOCKINGS.keys())
def test_blocked_attention_is_exact(blocking):
    """Every blocking gives the attention of one block, for a full [B, 1, Sq, Sk] bias, a keys-only bias and none,
    with K/V in either layout (the projections' or the cache's). One program computes all six, so each blocking
    compiles once."""
    options = layers.AttentionOptions("xla", *blocking)
    rng = np.random.default_rng(blocking[0] % 97)
    b, sq, sk, h, kv, d = 4, 37, 29, 6, 2, 8  # grouped heads; 37 queries split into uneven chunks (padding)
    q = jnp.asarray(rng.normal(size=(b, sq, h, d)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(b, sk, kv, d)), jnp.float32) for _ in range(2))
    biases = [jnp.asarray(np.where(rng.random(shape) < 0.3, BLOCKED, 0.0), jnp.float32)
              for shape in ((b, 1, sq, sk), (b, 1, 1, sk))] + [None]

    def every_case(q, k, v, biases):
        cached_k, cached_v = layers.to_layout(k, "bskd", layers.CACHED.k), layers.to_layout(v, "bskd", layers.CACHED.v)
        return [(layers.attention(q, k, v, bias, options, layers.PROJECTED),
                 layers.attention(q, cached_k, cached_v, bias, options, layers.CACHED)) for bias in biases]

    for bias, outputs in zip(biases, jax.jit(every_case)(q, k, v, biases)):
        expected = jax.nn.dot_product_attention(q, k, v, bias=bias, implementation="xla")
        for got in outputs:
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layout", ["projected", "cached"])
@pytest.mark.parametrize("blocking", [BLOCKINGS["one-block"], BLOCKINGS["rows-query-chunks"]],
                         ids=["one-block", "rows-query-chunks"])
def test_attention_backward_keeps_no_scores(blocking, layout):
    """Gradients equal jax.nn.dot_product_attention's, with K/V in either layout and a bias that masks some keys of
    every query and every key of some queries (a row the softmax spreads uniformly), and what differentiation keeps
    for the backward pass (the leaves of the vjp closure) holds nothing the size of the [B, H, Sq, Sk] scores: they
    are recomputed."""
    options = layers.AttentionOptions("xla", *blocking)
    kv_layout = {"projected": layers.PROJECTED, "cached": layers.CACHED}[layout]
    rng = np.random.default_rng(3)
    b, sq, sk, h, kv, d = 4, 37, 29, 6, 2, 8
    q = jnp.asarray(rng.normal(size=(b, sq, h, d)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(b, sk, kv, d)), jnp.float32) for _ in range(2))
    blocked = rng.random((b, 1, sq, sk)) < 0.3
    blocked[0, 0, 5] = blocked[3, 0, 36] = True
    bias = jnp.asarray(np.where(blocked, BLOCKED, 0.0), jnp.float32)
    cotangent = jnp.asarray(rng.normal(size=(b, sq, h, d)), jnp.float32)
    ours, ours_vjp = jax.vjp(lambda q, k, v: layers.attention(q, layers.to_layout(k, "bskd", kv_layout.k),
                                                              layers.to_layout(v, "bskd", kv_layout.v), bias, options,
                                                              kv_layout), q, k, v)
    _, reference_vjp = jax.vjp(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, bias=bias), q, k, v)
    for got, expected in zip(ours_vjp(cotangent), reference_vjp(cotangent)):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert max(leaf.size for leaf in jax.tree.leaves(ours_vjp)) < b * h * sq * sk


def test_blocking_bounds_the_score_block():
    """Under a 5 KB budget every matmul result of the traced computation (scores and outputs) fits the budget; one
    unblocked score array would be 5x larger."""
    budget = 5_000
    q = jnp.zeros((4, 37, 6, 8))
    k = v = jnp.zeros((4, 29, 2, 8))
    options = layers.AttentionOptions(block_bytes=budget, split_batch=True)
    text = jax.jit(layers.attention, static_argnums=4).lower(q, k, v, None, options).as_text()
    results = re.findall(r"dot_general.*?-> tensor<([0-9x]+)xf32>", text)
    assert results, "no matmul found in the lowered attention"
    assert max(4 * math.prod(int(n) for n in r.split("x")) for r in results) <= budget
    assert 4 * 6 * 37 * 29 * 4 > 5 * budget


def test_model_in_small_blocks_matches_transformers(tmp_path):
    """With `attention_block_bytes=4096` (blocks in the vision tower, self- and cross-attention) the model traces more
    loops than with the default blocks, and still matches transformers."""
    hf_model, directory = saved_hf_model(tmp_path, seed=0)
    batch = make_batch(np.random.default_rng(1), [[1], [2], [7], [6]], 11, [[0], [3], [5], [1]])
    ours = lj.load_pretrained(directory, attention_block_bytes=4096)
    assert relative_error(ours(**batch), hf_logits(hf_model, batch)) < 1e-5

    def loops(model):
        graphdef, state = nnx.split(model)
        forward = lambda s, inputs: nnx.merge(graphdef, s).forward(**inputs)
        return jax.jit(forward).lower(state, {k: jnp.asarray(v) for k, v in batch.items()}).as_text().count(
            "stablehlo.while")

    assert loops(ours) > loops(lj.load_pretrained(directory))


def test_blocks_spanning_the_batch_keep_it_sharded():
    """The accelerator blocking (queries only) leaves a batch sharded over devices where it is: no gather."""
    options = layers.AttentionOptions(block_bytes=5_000, split_batch=False)
    mesh = make_mesh(data=jax.device_count(), fsdp=1)
    shard = NamedSharding(mesh, P("data"))
    b = jax.device_count()
    q = jax.device_put(jnp.ones((b, 37, 6, 8)), shard)
    k = v = jax.device_put(jnp.ones((b, 29, 2, 8)), shard)
    compiled = jax.jit(layers.attention, static_argnums=4, out_shardings=shard).lower(q, k, v, None,
                                                                                       options).compile().as_text()
    assert "while" in compiled, "the queries were not blocked"
    assert "all-gather" not in compiled and "all-to-all" not in compiled


@pytest.mark.gpu
@pytest.mark.parametrize("bias_kind", ["full", "keys", "none"])
def test_cudnn_attention_matches_xla(bias_kind):
    """On an NVIDIA GPU the fused cuDNN flash attention gives the exact path's attention within bf16 rounding, with
    grouped K/V heads and each bias shape the model passes."""
    rng = np.random.default_rng(0)
    b, sq, sk, h, kv, d = 2, 128, 96, 8, 2, 64
    q = jnp.asarray(rng.normal(size=(b, sq, h, d)), jnp.bfloat16)
    k, v = (jnp.asarray(rng.normal(size=(b, sk, kv, d)), jnp.bfloat16) for _ in range(2))
    shape = {"full": (b, 1, sq, sk), "keys": (b, 1, 1, sk)}.get(bias_kind)
    bias = None if shape is None else jnp.asarray(np.where(rng.random(shape) < 0.3, BLOCKED, 0.0), jnp.float32)
    run = jax.jit(layers.attention, static_argnums=4)
    exact = run(q, k, v, bias, layers.AttentionOptions("xla"))
    fused = run(q, k, v, bias, layers.AttentionOptions("cudnn"))
    assert fused.dtype == exact.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(fused, np.float32), np.asarray(exact, np.float32), rtol=2e-2, atol=2e-2)
