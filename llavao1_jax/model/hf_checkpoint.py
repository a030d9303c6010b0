"""Hugging Face checkpoint import and export for `Mllama`.

Import reads (multi-file) safetensors checkpoints in pieces: every parameter is assembled with
`jax.make_array_from_callback`, and the callback for a device reads from the files, through safetensors' `get_slice`,
only the layers and elements of that device's shard (a fully replicated parameter is read once, a partly replicated
one by each device holding a copy). So loading onto a mesh reads about one checkpoint's worth of bytes in all, and the
host holds one shard of one tensor at a time. Both tensor layouts are accepted: the Hub's
(`language_model.model.*`, `vision_model.*`, `language_model.lm_head.*`) and transformers >= 4.52 / 5.x
(`model.language_model.*`, `model.vision_model.*`, `lm_head.*`). Export writes the Hub layout, which every
transformers version loads. Both text layouts (`MllamaConfig.scan_layers`) map onto the same tensors: a stacked
parameter to one tensor per layer, a per-layer parameter (`language_model.layers.{i}.*`) to exactly one.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import re
from pathlib import Path
from typing import Callable, Optional

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from safetensors import safe_open
from safetensors.numpy import save_file
from tqdm import tqdm

from llavao1_jax.model.config import MllamaConfig
from llavao1_jax.model.mllama import Mllama
from llavao1_jax.sharding import DEFAULT_RULES, state_shardings

# Our stacked groups -> (Hub prefix of one layer, which layer indices belong to the group).
_GROUPS = {
    "vision_model.transformer.": ("vision_model.transformer.layers.{}.", lambda c: range(c.vision.num_hidden_layers)),
    "vision_model.global_transformer.": ("vision_model.global_transformer.layers.{}.",
                                         lambda c: range(c.vision.num_global_layers)),
    "language_model.self_layers.": ("language_model.model.layers.{}.", lambda c: c.text.self_layer_indices),
    "language_model.cross_layers.": ("language_model.model.layers.{}.", lambda c: c.text.cross_layer_indices),
}
# Renames inside a name (ours -> Hub), applied in order.
_RENAMES = [
    (r"^(vision_model\.(?:global_)?transformer\.)([qkvo]_proj)\.", r"\1self_attn.\2."),
    (r"^(vision_model\.(?:global_)?transformer\.)(fc[12])\.", r"\1mlp.\2."),
    (r"^(language_model\.(?:cross_layers|layers\.\d+)\.)([qk]_norm)\.", r"\1cross_attn.\2."),
    (r"^language_model\.layers\.", "language_model.model.layers."),  # per-layer text layout: one tensor each
    (r"^language_model\.lm_head\.", "language_model.lm_head."),
    (r"^language_model\.(embed_tokens|norm)\b", r"language_model.model.\1"),
    (r"\.kernel$", ".weight"),
    (r"^(language_model\.model\.embed_tokens|vision_model\.patch_embedding)$", r"\1.weight"),
    (r"(tile_positional_embedding\.embedding|gated_positional_embedding\.tile_embedding)$", r"\1.weight"),
]
# Newer in-memory names (transformers >= 4.52 and 5.x) -> Hub names.
_HUB_ALIASES = [
    (r"^model\.language_model\.", "language_model.model."),
    (r"^model\.vision_model\.", "vision_model."),
    (r"^model\.multi_modal_projector\.", "multi_modal_projector."),
    (r"^lm_head\.", "language_model.lm_head."),
]


@dataclasses.dataclass(frozen=True)
class TensorMap:
    """How one of our parameters is stored in a Hub checkpoint: one tensor, or one tensor per stacked layer."""

    path: tuple[str, ...]
    hub_names: tuple[str, ...]
    stacked: bool
    kind: str  # "linear" (transpose), "conv" ([out,in,kh,kw] <-> [in,kh,kw,out]), "reshape", "same"

    def hub_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of the Hub tensor behind our (per-layer) `shape`."""
        if self.kind == "linear":
            return tuple(reversed(shape))
        if self.kind == "conv":
            return (shape[3], *shape[:3])
        if self.kind == "reshape":
            return (shape[0], math.prod(shape[1:]))
        return tuple(shape)

    def read(self, tensor, index: tuple[slice, ...], shape: tuple[int, ...]) -> np.ndarray:
        """Our (per-layer) array of `shape`, at `index`, read from `tensor` (a safetensors `get_slice` handle):
        only the Hub elements it selects are read."""
        if self.kind == "linear":
            return tensor[index[::-1]].T
        if self.kind == "conv":
            return tensor[(index[3], *index[:3])].transpose(1, 2, 3, 0)
        if self.kind == "reshape":
            # A Hub row holds our trailing axes flattened: one contiguous run of the last axis per middle position.
            middle = [range(*i.indices(n)) for i, n in zip(index[1:-1], shape[1:-1])]
            first, stop, _ = index[-1].indices(shape[-1])
            starts = [int(np.ravel_multi_index(p, shape[1:-1])) * shape[-1] for p in itertools.product(*middle)]
            runs = np.stack([tensor[index[0], start + first:start + stop] for start in starts], axis=1)
            return runs.reshape(runs.shape[0], *map(len, middle), stop - first)
        return tensor[index]

    def to_hub(self, t: np.ndarray) -> np.ndarray:
        if self.kind == "linear":
            return np.ascontiguousarray(t.T)
        if self.kind == "conv":
            return np.ascontiguousarray(t.transpose(3, 0, 1, 2))
        if self.kind == "reshape":
            return t.reshape(t.shape[0], -1)
        return t


def tensor_maps(config: MllamaConfig, state: nnx.State) -> list[TensorMap]:
    """The Hub tensor(s) behind every parameter of `state` (an abstract or concrete Mllama state)."""
    maps = []
    for path, _ in jax.tree_util.tree_flatten_with_path(state)[0]:
        keys = tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
        if keys[-1] == "value":
            keys = keys[:-1]
        dotted = ".".join(keys)
        name = dotted
        for pattern, repl in _RENAMES:
            name = re.sub(pattern, repl, name)
        kind = ("linear" if keys[-1] == "kernel" else "conv" if keys[-1] == "patch_embedding"
                else "reshape" if name.endswith(("tile_positional_embedding.embedding.weight",
                                                 "tile_embedding.weight")) else "same")
        group = next((g for g in _GROUPS if dotted.startswith(g)), None)
        if group is None:
            maps.append(TensorMap(keys, (name,), False, kind))
        else:
            template, indices = _GROUPS[group]
            rest = name[len(group):]
            maps.append(TensorMap(keys, tuple(template.format(i) + rest for i in indices(config)), True, kind))
    return maps


class SafetensorsDir:
    """Lazy access to the tensors of a Hugging Face checkpoint directory, under Hub names."""

    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)
        if not self.dir.is_dir():
            raise FileNotFoundError(f"checkpoint directory {self.dir} does not exist")
        index = self.dir / "model.safetensors.index.json"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
        else:
            files = sorted(self.dir.glob("*.safetensors"))
            if not files:
                raise FileNotFoundError(f"no *.safetensors files in {self.dir}")
            weight_map = {}
            for f in files:
                with safe_open(f, framework="numpy") as h:
                    weight_map.update({k: f.name for k in h.keys()})
        self.files: dict[str, str] = {}
        self.original: dict[str, str] = {}
        for stored, file in weight_map.items():
            hub = stored
            for pattern, repl in _HUB_ALIASES:
                hub = re.sub(pattern, repl, hub)
            self.files[hub], self.original[hub] = file, stored
        self._handles = {}

    def _handle(self, file: str):
        if file not in self._handles:
            path = self.dir / file
            if not path.exists():
                raise FileNotFoundError(f"{path} is listed in the index but missing")
            self._handles[file] = safe_open(path, framework="numpy")
        return self._handles[file]

    def tensor(self, name: str):
        """A safetensors slice handle of tensor `name`: `get_shape()`, and indexing reads only what it selects."""
        return self._handle(self.files[name]).get_slice(self.original[name])


def _check_names(maps: list[TensorMap], ckpt: SafetensorsDir, source: Path) -> None:
    expected = {n for m in maps for n in m.hub_names}
    missing = sorted(expected - ckpt.files.keys())
    unexpected = sorted(ckpt.files.keys() - expected)
    if missing or unexpected:
        lines = [f"checkpoint {source} does not match the model built from its config.json:"]
        if missing:
            lines.append(f"  missing {len(missing)} tensor(s), e.g. {missing[:5]}")
        if unexpected:
            lines.append(f"  unexpected {len(unexpected)} tensor(s), e.g. {unexpected[:5]}")
        raise ValueError("\n".join(lines))


def _param_loader(m: TensorMap, ckpt: SafetensorsDir, shape, dtype) -> Callable:
    """A make_array_from_callback callback reading only the layers and elements a shard needs."""
    layer_shape = tuple(shape[1:] if m.stacked else shape)

    def read(name: str, index: tuple[slice, ...]) -> np.ndarray:
        tensor = ckpt.tensor(name)
        got = tuple(tensor.get_shape())
        if got != m.hub_shape(layer_shape):
            raise ValueError(f"tensor {name} has shape {got}, which does not fit parameter "
                             f"{'.'.join(m.path)} of shape {layer_shape}")
        return m.read(tensor, index, layer_shape).astype(dtype)

    def callback(index):
        index = tuple(index) + (slice(None),) * (len(shape) - len(index))
        if not m.stacked:
            return read(m.hub_names[0], index)
        layers = range(len(m.hub_names))[index[0]]
        return np.stack([read(m.hub_names[i], index[1:]) for i in layers])

    return callback


def load_pretrained(hf_dir: str | os.PathLike, dtype: str = "float32", *, param_dtype: Optional[str] = None,
                    mesh: Optional[Mesh] = None, rules=DEFAULT_RULES, **config_overrides) -> Mllama:
    """Loads a transformers-format Mllama checkpoint directory (config.json + *.safetensors [+ index json]).

    dtype: compute dtype; param_dtype: storage dtype (defaults to `dtype`). With a `mesh`, every parameter is placed
    by its logical axis names through `rules` (see `llavao1_jax.sharding`); without one, on the first device.
    Other keywords override `MllamaConfig` fields (e.g. remat="full", or scan_layers=False for the per-layer text
    layout that decoding wants; the default scanned layout suits training).
    """
    hf_dir = Path(hf_dir)
    if not hf_dir.is_dir():
        raise FileNotFoundError(f"checkpoint directory {hf_dir} does not exist")
    config = MllamaConfig.from_json_file(hf_dir / "config.json", dtype=dtype, param_dtype=param_dtype or dtype,
                                         **config_overrides)
    abstract = nnx.eval_shape(lambda: Mllama(config, rngs=nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(abstract)
    maps = tensor_maps(config, abstract_state)
    ckpt = SafetensorsDir(hf_dir)
    _check_names(maps, ckpt, hf_dir)
    leaves, treedef = jax.tree.flatten(abstract_state)
    if mesh is None:
        sharding_leaves = [jax.sharding.SingleDeviceSharding(jax.devices()[0])] * len(leaves)
    else:
        sharding_leaves = jax.tree.leaves(state_shardings(abstract_state, mesh, rules))
    arrays = []
    for m, leaf, sharding in tqdm(list(zip(maps, leaves, sharding_leaves)), desc=f"loading {hf_dir.name}",
                                  unit="param", disable=len(maps) < 200):
        arrays.append(jax.make_array_from_callback(leaf.shape, sharding,
                                                   _param_loader(m, ckpt, leaf.shape, leaf.dtype)))
    return nnx.merge(graphdef, jax.tree.unflatten(treedef, arrays))


def save_pretrained(model: Mllama, out_dir: str | os.PathLike, *, max_shard_bytes: int = 5 * 2 ** 30) -> Path:
    """Writes `model` as a transformers-format directory (config.json, safetensors shards, index json).

    Tensors are fetched one at a time (one layer of a stacked parameter at a time), so host memory stays within
    one shard file.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = nnx.state(model, nnx.Param)
    maps = tensor_maps(model.config, state)
    leaves = jax.tree.leaves(state)
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    tmp_names = []

    def flush():
        nonlocal size
        if shards[-1]:
            name = f"shard-{len(tmp_names):05d}.tmp"
            save_file(shards[-1], str(out / name), metadata={"format": "pt"})
            tmp_names.append((name, list(shards[-1])))
            shards[-1] = {}
            size = 0

    for m, arr in tqdm(list(zip(maps, leaves)), desc=f"saving {out.name}", unit="param", disable=len(maps) < 200):
        pieces = ([(n, arr[i]) for i, n in enumerate(m.hub_names)] if m.stacked else [(m.hub_names[0], arr)])
        for name, piece in pieces:
            t = m.to_hub(np.asarray(jax.device_get(piece)))
            if size + t.nbytes > max_shard_bytes:
                flush()
            shards[-1][name] = t
            size += t.nbytes
    flush()
    weight_map = {}
    for i, (tmp, names) in enumerate(tmp_names):
        final = ("model.safetensors" if len(tmp_names) == 1
                 else f"model-{i + 1:05d}-of-{len(tmp_names):05d}.safetensors")
        os.replace(out / tmp, out / final)
        weight_map.update({n: final for n in names})
    if len(tmp_names) > 1:
        total = sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in leaves)
        (out / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (out / "config.json").write_text(json.dumps(model.config.to_hf_dict(), indent=2))
    return out
