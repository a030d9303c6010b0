"""Building blocks shared by the vision encoder and the text decoder.

Every parameter is an `nnx.Param` carrying logical axis names (`out_sharding` metadata) that
`llavao1_jax.sharding` maps onto a device mesh. Computation casts parameters to the compute dtype on use.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llavao1_jax.util import ceil_div

Axes = tuple[Optional[str], ...]

ACTIVATIONS: dict[str, Callable] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # torch's exact erf GELU
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
}


def activation(name: str) -> Callable:
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}; supported: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def param(rngs: nnx.Rngs, shape: Sequence[int], axes: Axes, dtype, init: str = "normal") -> nnx.Param:
    """A parameter with logical axis names; `init` is 'normal' (std 0.02), 'zeros' or 'ones'."""
    if len(axes) != len(shape):
        raise ValueError(f"axes {axes} do not match shape {tuple(shape)}")
    if init == "normal":
        value = 0.02 * jax.random.normal(rngs.params(), shape, dtype)
    elif init == "zeros":
        value = jnp.zeros(shape, dtype)
    elif init == "ones":
        value = jnp.ones(shape, dtype)
    else:
        raise ValueError(f"unknown init {init!r}")
    return nnx.Param(value, out_sharding=tuple(axes), eager_sharding=False)


class Linear(nnx.Module):
    """y = x @ kernel (+ bias), kernel stored [in, out] (the transpose of torch's [out, in])."""

    def __init__(self, d_in: int, d_out: int, axes: Axes, *, bias: bool = False, param_dtype, dtype,
                 rngs: nnx.Rngs):
        self.kernel = param(rngs, (d_in, d_out), axes, param_dtype)
        self.bias = param(rngs, (d_out,), axes[1:], param_dtype, "zeros") if bias else None
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class RMSNorm(nnx.Module):
    """Llama RMSNorm: normalise in float32, cast back to the input dtype, then scale."""

    def __init__(self, dim: int, eps: float, axis_name: Optional[str], *, param_dtype, rngs: nnx.Rngs):
        self.weight = param(rngs, (dim,), (axis_name,), param_dtype, "ones")
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.weight[...].astype(x.dtype) * y.astype(x.dtype)


class LayerNorm(nnx.Module):
    """LayerNorm with bias; statistics in float32."""

    def __init__(self, dim: int, eps: float, axis_name: Optional[str], *, param_dtype, rngs: nnx.Rngs):
        self.weight = param(rngs, (dim,), (axis_name,), param_dtype, "ones")
        self.bias = param(rngs, (dim,), (axis_name,), param_dtype, "zeros")
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * self.weight[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)).astype(x.dtype)


def mask_value(dtype=jnp.float32) -> float:
    """The additive value of a blocked attention entry (transformers uses finfo.min, not -inf)."""
    return float(jnp.finfo(dtype).min)


@dataclasses.dataclass(frozen=True)
class AttentionOptions:
    """How `attention` runs (static: a change retraces).

    implementation: "xla" (exact, blocked) or "cudnn" (fused flash attention on NVIDIA GPUs, bf16/fp16).
    block_bytes: the most bytes of float32 scores one block of the "xla" path may hold; split_batch: whether a block
    may take a subset of the batch rows. None picks the backend's default (`default_blocking`).
    """

    implementation: str = "xla"
    block_bytes: Optional[int] = None
    split_batch: Optional[bool] = None

    def blocking(self, backend: str) -> tuple[int, bool]:
        """(block_bytes, split_batch) on `backend`, defaults filled in."""
        default_bytes, default_split = default_blocking(backend)
        return (default_bytes if self.block_bytes is None else self.block_bytes,
                default_split if self.split_batch is None else self.split_batch)


def default_blocking(backend: str) -> tuple[int, bool]:
    """The default (block_bytes, split_batch) of `attention` on `backend`.

    On CPU small blocks of a few batch rows stay in cache (8 MiB). On accelerators blocks span the batch, which may be
    sharded (slicing a sharded batch would gather it onto every device), and bound memory (1 GiB; one [B, H, S, S]
    array for 32 tiles of the 11B vision tower is 20 GB).
    """
    return (8 << 20, True) if backend == "cpu" else (1 << 30, False)


class KVLayout(NamedTuple):
    """The axis order of attention keys and values, as einsum letters: b batch, s key position, k K/V head,
    d head dimension."""

    k: str
    v: str

    def position_axis(self) -> tuple[int, int]:
        """The key-position axis of K and of V."""
        return self.k.index("s"), self.v.index("s")


# K/V as the projections give them ([B, S, KV, D], the layout of training and of cudnn).
PROJECTED = KVLayout("bskd", "bskd")
# K/V as the decoding cache keeps them: per K/V head, K transposed [B, KV, D, S] and V [B, KV, S, D], so that both
# attention matmuls read the cache in place as plain batched matrix products over (batch, head), with no per-step
# transpose.
CACHED = KVLayout("bkds", "bksd")


def to_layout(x: jax.Array, source: str, target: str) -> jax.Array:
    """K or V moved from the axis order `source` to `target` (einsum letters, see `KVLayout`)."""
    return x if source == target else jnp.einsum(f"{source}->{target}", x)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, bias: Optional[jax.Array],
              options: AttentionOptions = AttentionOptions(), layout: KVLayout = PROJECTED):
    """Scaled dot-product attention with grouped K/V heads and an additive bias, softmax in float32.

    q: [B, Sq, H, D]; k, v: in `layout` (by default [B, Sk, KV, D]) with H a multiple of KV; bias: [B or 1, 1, Sq
    or 1, Sk] (0 = attend, finfo.min = blocked). "xla" computes scores, then softmax, exactly as transformers' eager
    path, in blocks of queries (and of batch rows on CPU) whose scores fit `options.blocking`; "cudnn" is the fused
    flash kernel on NVIDIA GPUs (bf16/fp16) for K/V in the PROJECTED layout (attention over a cache always takes the
    "xla" path, which reads the cache in place). Returns [B, Sq, H, D].
    """
    if options.implementation == "cudnn" and layout == PROJECTED:
        bias = None if bias is None else bias.astype(q.dtype)
        return jax.nn.dot_product_attention(q, k, v, bias=bias, implementation="cudnn")
    b, sq, h, _ = q.shape
    sk = k.shape[layout.position_axis()[0]]
    bias = jnp.zeros((1, 1, 1, sk), jnp.float32) if bias is None else bias.astype(jnp.float32)
    budget, split_batch = options.blocking(jax.default_backend())
    row_bytes = h * sq * sk * 4
    if b * row_bytes <= budget:
        return _exact_attention(q, k, v, bias, layout)
    rows = b if not split_batch else max(r for r in range(1, b + 1)
                                         if b % r == 0 and (r == 1 or r * row_bytes <= budget))
    chunks = min(ceil_div(rows * row_bytes, budget), sq)
    size = ceil_div(sq, chunks)
    pad = chunks * size - sq
    q = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
    if bias.shape[2] > 1:
        bias = jnp.pad(bias, ((0, 0), (0, 0), (0, pad), (0, 0)))
    take = lambda x, start, length, axis: (x if x.shape[axis] in (1, length) else
                                           jax.lax.dynamic_slice_in_dim(x, start, length, axis))

    def block(i):
        first, query = (i // chunks) * rows, (i % chunks) * size
        kb, vb = take(k, first, rows, 0), take(v, first, rows, 0)
        qb = take(take(q, first, rows, 0), query, size, 1)
        return _exact_attention(qb, kb, vb, take(take(bias, first, rows, 0), query, size, 2), layout)

    out = jax.lax.map(block, jnp.arange(b // rows * chunks))  # [blocks, rows, size, h, d]
    out = out.reshape(b // rows, chunks, rows, size, h, -1)
    return jnp.moveaxis(out, 1, 2).reshape(b, chunks * size, h, -1)[:, :sq]


def _query_rows(q: jax.Array, kv: int) -> jax.Array:
    """q [B, Sq, H, D] -> [B, KV, Sq * G, D]: the queries of one K/V head as the rows of one matrix, ordered
    (query, group)."""
    b, sq, h, d = q.shape
    return q.reshape(b, sq, kv, h // kv, d).transpose(0, 2, 1, 3, 4).reshape(b, kv, sq * (h // kv), d)


def _from_query_rows(rows: jax.Array, sq: int) -> jax.Array:
    """The inverse of `_query_rows`: [B, KV, Sq * G, D] -> [B, Sq, H, D]."""
    b, kv, m, d = rows.shape
    return rows.reshape(b, kv, sq, m // sq, d).transpose(0, 2, 1, 3, 4).reshape(b, sq, -1, d)


def _logits(rows, k, bias, sq: int, layout: KVLayout) -> jax.Array:
    """Scaled scores plus bias, [B, KV, Sq * G, Sk] float32 (the scores rounded to the input dtype first)."""
    b, kv, m, d = rows.shape
    scores = jnp.einsum(f"bkmd,{layout.k}->bkms", rows, k)
    scores = scores * jnp.asarray(1 / np.sqrt(d), scores.dtype)
    scores = (scores.reshape(b, kv, sq, m // sq, -1) + bias[:, :, :, None]).astype(rows.dtype)
    return scores.astype(jnp.float32).reshape(b, kv, m, -1)


def _attention_forward(q, k, v, bias, layout: KVLayout):
    """The output [B, Sq, H, D] and, for the backward pass, the output as query rows and the softmax's maximum and
    normaliser [B, KV, Sq * G, 1]."""
    rows = _query_rows(q, k.shape[layout.k.index("k")])
    logits = _logits(rows, k, bias, q.shape[1], layout)
    peak = jnp.max(logits, axis=-1, keepdims=True)
    unnormalised = jnp.exp(logits - peak)
    total = jnp.sum(unnormalised, axis=-1, keepdims=True)
    probs = (unnormalised / total).astype(v.dtype)  # jax.nn.softmax's arithmetic, step for step
    out_rows = jnp.einsum(f"bkms,{layout.v}->bkmd", probs, v)
    return _from_query_rows(out_rows, q.shape[1]), (out_rows, peak, total)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _exact_attention(q, k, v, bias, layout: KVLayout):
    """One block of `attention`: scores in the input dtype, bias added, softmax in float32, weighted sum.

    The queries of one K/V head form the rows of one matrix ([B, KV, Sq * G, D]), so both products are batched
    matmuls over (batch, K/V head), the form XLA's CPU matmul library runs fastest.

    The backward pass is flash attention's: it keeps the inputs, the output and the softmax's maximum and
    normaliser per row, recomputes the probabilities in one pass, and takes the softmax's correction from
    rowsum(dO * O) over the head dimension instead of over the keys. So no [B, H, Sq, Sk] array outlives the block
    (a scan over layers would otherwise stack every layer's scores for the backward pass). The bias is a mask: no
    gradient flows into it."""
    return _attention_forward(q, k, v, bias, layout)[0]


def _exact_attention_fwd(q, k, v, bias, layout):
    out, (out_rows, peak, total) = _attention_forward(q, k, v, bias, layout)
    return out, (q, k, v, bias, out_rows, peak, 1 / total)


def _exact_attention_bwd(layout, residuals, d_out):
    q, k, v, bias, out_rows, peak, inverse_total = residuals
    rows = _query_rows(q, k.shape[layout.k.index("k")])
    d_rows_out = _query_rows(d_out, k.shape[layout.k.index("k")])
    # with the forward's maximum and normaliser, not a log-normaliser: a row whose every key is masked (logits all
    # finfo.min) keeps its uniform probabilities
    probs = jnp.exp(_logits(rows, k, bias, q.shape[1], layout) - peak) * inverse_total
    d_v = jnp.einsum(f"bkms,bkmd->{layout.v}", probs.astype(v.dtype), d_rows_out)
    d_probs = jnp.einsum(f"bkmd,{layout.v}->bkms", d_rows_out, v, preferred_element_type=jnp.float32)
    correction = jnp.sum(d_rows_out.astype(jnp.float32) * out_rows.astype(jnp.float32), axis=-1, keepdims=True)
    d_scores = (probs * (d_probs - correction) * (1 / np.sqrt(q.shape[-1]))).astype(q.dtype)
    d_rows = jnp.einsum(f"bkms,{layout.k}->bkmd", d_scores, k)
    d_k = jnp.einsum(f"bkms,bkmd->{layout.k}", d_scores, rows)
    return _from_query_rows(d_rows, q.shape[1]), d_k.astype(k.dtype), d_v.astype(v.dtype), None


_exact_attention.defvjp(_exact_attention_fwd, _exact_attention_bwd)


def rope_inv_freq(head_dim: int, theta: float, rope_type: str, factor: float, low_freq_factor: float,
                  high_freq_factor: float, original_max_position: int) -> np.ndarray:
    """Inverse RoPE frequencies in float32, with Llama-3 frequency scaling when rope_type == 'llama3'."""
    exponent = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    inv = (np.float32(1.0) / np.power(np.float32(theta), exponent)).astype(np.float32)
    if rope_type == "default":
        return inv
    wavelen = np.float32(2 * np.pi) / inv
    low_wl = np.float32(original_max_position / low_freq_factor)
    high_wl = np.float32(original_max_position / high_freq_factor)
    scaled = np.where(wavelen > low_wl, inv / np.float32(factor), inv)
    smooth = (np.float32(original_max_position) / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / np.float32(factor) + smooth * scaled
    medium = ~(wavelen < high_wl) & ~(wavelen > low_wl)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def rope_cos_sin(positions: jax.Array, inv_freq: np.ndarray, dtype) -> tuple[jax.Array, jax.Array]:
    """cos/sin tables [B, S, head_dim] for integer positions [B, S], computed in float32, cast to `dtype`."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)[None, None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate-half RoPE on x [B, S, H, D] (Hugging Face weight layout)."""
    x1, x2 = jnp.split(x, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]


def stack_layers(make_layer: Callable[[nnx.Rngs], nnx.Module], num_layers: int, rngs: nnx.Rngs) -> nnx.Module:
    """`num_layers` copies of a layer with parameters stacked on a leading 'layers' axis (for lax.scan)."""

    @nnx.split_rngs(splits=num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def create(layer_rngs):
        return make_layer(layer_rngs)

    return create(rngs)


REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def scan_layers(layers: nnx.Module, step: Callable, carry, xs=None, *, remat: str = "none", start=None, stop=None):
    """Runs `step(layer, carry, x) -> (carry, y)` over stacked `layers[start:stop]` with lax.scan.

    `xs` are per-layer inputs with the same leading axis (sliced alike). The body is traced once whatever the depth;
    `remat` picks an activation checkpointing policy from REMAT_POLICIES.
    """
    if remat not in REMAT_POLICIES:
        raise ValueError(f"unknown remat policy {remat!r}; choose from {sorted(REMAT_POLICIES)}")
    graphdef, state = nnx.split(layers)
    if start is not None or stop is not None:
        state = jax.tree.map(lambda a: a[start:stop], state)
        xs = jax.tree.map(lambda a: a[start:stop], xs)

    def body(c, inputs):
        layer_state, x = inputs
        return step(nnx.merge(graphdef, layer_state), c, x)

    if remat != "none":
        body = jax.checkpoint(body, policy=REMAT_POLICIES[remat], prevent_cse=False)
    return jax.lax.scan(body, carry, (state, xs))
