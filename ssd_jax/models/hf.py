"""HF safetensors directories ⇄ NNX models.

Loading streams one tensor at a time: each JAX parameter is assembled on the host from its HF tensor(s) (read
zero-copy from a memory-mapped safetensors file), transformed, and placed straight onto its target sharding; the
host never holds more than one parameter. Export writes sharded safetensors + index + config + tokenizer files
to a temporary directory and renames it into place, so a killed export leaves nothing half-written.

The safetensors format (8-byte little-endian header length, JSON header, raw little-endian data) is read and
written here directly so that bf16/fp8 checkpoints need neither torch nor a full copy.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import shutil
import struct
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from ssd_jax.errors import CheckpointError
from ssd_jax.models import family_for
from ssd_jax.models.transformer import CausalLM, ModelConfig
from ssd_jax.sharding import param_sharding, path_str

ST_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
ST_NAMES = {v: k for k, v in ST_DTYPES.items()}

# Files copied next to the weights on export so that transformers and vLLM load the directory as a whole.
SIDE_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)
# HF keys that carry no weights (buffers some exporters save).
IGNORED_KEYS = re.compile(r"(^|\.)rotary_emb\.inv_freq$")


# ----------------------------------------------------------------------------------------------------------------
# safetensors
# ----------------------------------------------------------------------------------------------------------------


class SafetensorsFile:
    """One memory-mapped safetensors file; `get(name)` is a zero-copy numpy view."""

    def __init__(self, path: Path):
        self.path = path
        try:
            with open(path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
        except (OSError, struct.error, ValueError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
        self.metadata = header.pop("__metadata__", {}) or {}
        self.entries = header
        self._base = 8 + n
        self._mm: np.memmap | None = None

    def keys(self) -> list[str]:
        return list(self.entries)

    def get(self, name: str) -> np.ndarray:
        e = self.entries[name]
        if e["dtype"] not in ST_DTYPES:
            raise CheckpointError(f"{self.path}: tensor {name} has unsupported dtype {e['dtype']}")
        if self._mm is None:
            self._mm = np.memmap(self.path, dtype=np.uint8, mode="r")
        start, end = e["data_offsets"]
        raw = self._mm[self._base + start : self._base + end]
        dtype = ST_DTYPES[e["dtype"]]
        if raw.size != dtype.itemsize * math.prod(e["shape"]):
            raise CheckpointError(f"{self.path}: tensor {name} is truncated (file shorter than its header says)")
        return raw.view(dtype).reshape(e["shape"])


def write_safetensors(path: Path, tensors: list[tuple[str, np.ndarray]], metadata: dict | None = None) -> None:
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, t in tensors:
        header[name] = {"dtype": ST_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for _, t in tensors:
            np.ascontiguousarray(t).tofile(f)


class Checkpoint:
    """All tensors of an HF directory, single-file or sharded with `model.safetensors.index.json`."""

    def __init__(self, directory: Path):
        self.dir = directory
        index = directory / "model.safetensors.index.json"
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError) as e:
                raise CheckpointError(f"{index}: not a valid safetensors index ({e!r})") from None
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(p.name for p in directory.glob("*.safetensors"))
            if not files:
                raise CheckpointError(f"{directory}: no *.safetensors files (and no model.safetensors.index.json)")
            weight_map = None
        self.files: dict[str, SafetensorsFile] = {}
        self.where: dict[str, str] = {}
        for name in files:
            if not (directory / name).exists():
                raise CheckpointError(f"{index}: lists shard {name}, which is missing from {directory}")
            st = SafetensorsFile(directory / name)
            self.files[name] = st
            for key in st.keys():
                self.where[key] = name
        if weight_map is not None:
            for key, name in weight_map.items():
                if self.where.get(key) != name:
                    raise CheckpointError(f"{index}: key {key} is mapped to {name} but that shard does not hold it")

    def keys(self) -> list[str]:
        return list(self.where)

    def get(self, key: str) -> np.ndarray:
        return self.files[self.where[key]].get(key)

    def file_of(self, key: str) -> Path:
        return self.dir / self.where[key]


# ----------------------------------------------------------------------------------------------------------------
# key map
# ----------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _template_regex(template: str) -> re.Pattern:
    parts = re.split(r"(\{\w+\})", template)
    return re.compile("".join(f"(?P<{p[1:-1]}>\\d+)" if p.startswith("{") else re.escape(p) for p in parts) + "$")


@dataclass(frozen=True)
class KeyRule:
    hf: str
    jax: str
    kind: str  # same | flat | linear | linear_in2 | expert_linear

    @property
    def hf_re(self) -> re.Pattern:
        return _template_regex(self.hf)

    @property
    def jax_re(self) -> re.Pattern:
        return _template_regex(self.jax)

    def n_in(self) -> int:
        return 2 if self.kind == "linear_in2" else 1

    def hf_shape(self, jax_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of the HF tensor (per expert for `expert_linear`) that fills a JAX parameter of `jax_shape`."""
        if self.kind == "same":
            return tuple(jax_shape)
        if self.kind == "flat":
            return (math.prod(jax_shape),)
        shape = jax_shape[1:] if self.kind == "expert_linear" else jax_shape
        n = self.n_in()
        return (math.prod(shape[n:]), math.prod(shape[:n]))

    def to_jax(self, t: np.ndarray, jax_shape: tuple[int, ...]) -> np.ndarray:
        if self.kind in ("same", "flat"):
            return t.reshape(jax_shape)
        shape = jax_shape[1:] if self.kind == "expert_linear" else jax_shape
        return t.T.reshape(shape)

    def to_hf(self, a: np.ndarray) -> np.ndarray:
        if self.kind == "same":
            return a
        if self.kind == "flat":
            return a.reshape(-1)
        n = self.n_in()
        return np.ascontiguousarray(a.reshape(math.prod(a.shape[:n]), -1).T)


def key_rules(family) -> list[KeyRule]:
    """The family's key map; "reshape" means same shape (embeddings, norms) or flat in HF (biases)."""
    rules = []
    for hf, jx, kind in family.KEY_RULES:
        if kind == "reshape":
            kind = "flat" if jx.endswith("_bias") else "same"
        rules.append(KeyRule(hf, jx, kind))
    return rules


def _match_hf(rules: list[KeyRule], key: str) -> tuple[KeyRule, str, int | None] | None:
    for rule in rules:
        m = rule.hf_re.match(key)
        if m:
            groups = m.groupdict()
            expert = int(groups.pop("expert")) if "expert" in groups else None
            return rule, rule.jax.format(**groups), expert
    return None


def _match_jax(rules: list[KeyRule], path: str) -> tuple[KeyRule, dict] | None:
    for rule in rules:
        m = rule.jax_re.match(path)
        if m:
            return rule, m.groupdict()
    return None


# ----------------------------------------------------------------------------------------------------------------
# config
# ----------------------------------------------------------------------------------------------------------------


def read_hf_config(path: str | os.PathLike) -> dict:
    """The raw config.json of an HF directory, with one clear error for each way it can be unusable."""
    d = Path(path)
    if not d.exists():
        raise CheckpointError(f"{d}: model directory does not exist")
    if not d.is_dir():
        raise CheckpointError(f"{d}: expected an HF model directory, found a file")
    cfg_file = d / "config.json"
    if not cfg_file.exists():
        raise CheckpointError(f"{cfg_file}: missing (an HF model directory needs config.json)")
    try:
        raw = json.loads(cfg_file.read_text())
    except ValueError as e:
        raise CheckpointError(f"{cfg_file}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{cfg_file}: expected a JSON object")
    archs = raw.get("architectures")
    if not archs or not isinstance(archs, list):
        raise CheckpointError(f"{cfg_file}: key 'architectures' is missing; expected e.g. [\"LlamaForCausalLM\"]")
    family_for(archs[0], where=f"{cfg_file}: key 'architectures'")
    return raw


def model_config(path: str | os.PathLike, *, dtype: str = "float32", param_dtype: str | None = None,
                 moe_impl: str = "ragged") -> ModelConfig:
    """Read an HF directory's config.json into a ModelConfig (defaults resolved by transformers' config class)."""
    import transformers

    raw = read_hf_config(path)
    family = family_for(raw["architectures"][0])
    try:
        hf_cfg = transformers.AutoConfig.for_model(**raw)
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{Path(path) / 'config.json'}: transformers cannot read it ({e})") from None
    try:
        kw = {"moe_impl": moe_impl} if family.__name__.endswith("qwen3_moe") else {}
        cfg = family.config_from_hf(hf_cfg, **kw)
    except (AttributeError, KeyError) as e:
        raise CheckpointError(f"{Path(path) / 'config.json'}: missing key {e}") from None
    return replace(cfg, hf_config=raw, source_dir=str(Path(path).resolve()), dtype=dtype,
                   param_dtype=param_dtype or dtype)


# ----------------------------------------------------------------------------------------------------------------
# load
# ----------------------------------------------------------------------------------------------------------------


def load(path: str | os.PathLike, *, dtype: str = "float32", param_dtype: str | None = None, mesh=None,
         moe_impl: str = "ragged") -> CausalLM:
    """Build the NNX model of an HF directory, each parameter placed on its sharding (or the default device)."""
    d = Path(path)
    cfg = model_config(d, dtype=dtype, param_dtype=param_dtype, moe_impl=moe_impl)
    ckpt = Checkpoint(d)
    rules = key_rules(family_for(cfg.architecture))

    abstract = nnx.eval_shape(lambda: CausalLM(cfg, nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    flat = dict(nnx.to_flat_state(state))
    targets = {path_str(p): p for p in flat}

    # Plan: which HF tensors fill which parameter.
    sources: dict[str, list[tuple[str, KeyRule, int | None]]] = {k: [] for k in targets}
    for key in ckpt.keys():
        if IGNORED_KEYS.search(key):
            continue
        hit = _match_hf(rules, key)
        if hit is None:
            raise CheckpointError(f"{ckpt.file_of(key)}: tensor {key!r} matches no {cfg.architecture} key rule")
        rule, jax_path, expert = hit
        if jax_path not in targets:
            if key == "lm_head.weight" and cfg.tie_word_embeddings:
                continue  # tied checkpoints may still carry a copy of the embedding; HF ignores it too
            raise CheckpointError(
                f"{ckpt.file_of(key)}: tensor {key!r} has no place in this model "
                f"(config.json describes a {cfg.architecture} without parameter {jax_path})"
            )
        sources[jax_path].append((key, rule, expert))

    for jax_path, src in sources.items():
        hit = _match_jax(rules, jax_path)
        shape = flat[targets[jax_path]].get_value().shape
        expected = _hf_keys(hit[0], hit[1], shape) if hit else []
        missing = sorted(set(expected) - {k for k, _, _ in src}, key=_natural)
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise CheckpointError(f"{d}: checkpoint is missing tensor {missing[0]!r}{more} for parameter {jax_path}")

    np_param_dtype = np.dtype(jnp.dtype(cfg.param_dtype))
    for jax_path, src in sources.items():
        var = flat[targets[jax_path]]
        shape = tuple(var.get_value().shape)
        buf = np.empty(shape, np_param_dtype) if src[0][1].kind == "expert_linear" else None
        for key, rule, expert in src:
            t = ckpt.get(key)
            want = rule.hf_shape(shape)
            if tuple(t.shape) != want:
                raise CheckpointError(
                    f"{ckpt.file_of(key)}: tensor {key!r} has shape {tuple(t.shape)}, expected {want} from config.json"
                )
            if buf is not None:
                buf[expert] = rule.to_jax(t, shape)
            else:
                buf = rule.to_jax(t, shape).astype(np_param_dtype)
        sharding = param_sharding(jax_path, shape, mesh)
        host = buf
        var.set_value(jax.make_array_from_callback(shape, sharding, lambda idx, h=host: h[idx]))
        del buf, host
    return nnx.merge(graphdef, nnx.from_flat_state(list(flat.items())))


def empty_model(cfg: ModelConfig, mesh=None) -> CausalLM:
    """A model of zeros placed on its shardings: a restore target that costs no checkpoint I/O."""
    abstract = nnx.eval_shape(lambda: CausalLM(cfg, nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    flat = []
    for p, v in nnx.to_flat_state(state):
        a = v.get_value()
        flat.append((p, v.replace(jnp.zeros(a.shape, a.dtype, device=param_sharding(path_str(p), a.shape, mesh)))))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def _natural(s: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", s)]


def _hf_keys(rule: KeyRule, groups: dict, shape: tuple[int, ...]) -> list[str]:
    if rule.kind == "expert_linear":
        return [rule.hf.format(expert=e, **groups) for e in range(shape[0])]
    return [rule.hf.format(**groups)]


# ----------------------------------------------------------------------------------------------------------------
# export
# ----------------------------------------------------------------------------------------------------------------


def to_host(x: jax.Array) -> np.ndarray:
    """A full host copy of one (possibly sharded, possibly multi-host) array."""
    if not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(jax.device_get(x))


def hf_tensors(model: CausalLM, dtype: str | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """(HF key, tensor) for every parameter, in HF naming and layout, one parameter on the host at a time."""
    cfg = model.cfg
    rules = key_rules(family_for(cfg.architecture))
    out_dtype = np.dtype(jnp.dtype(dtype)) if dtype else None
    for path, var in sorted(nnx.to_flat_state(nnx.state(model, nnx.Param)), key=lambda pv: _natural(path_str(pv[0]))):
        jax_path = path_str(path)
        hit = _match_jax(rules, jax_path)
        if hit is None:
            raise KeyError(f"parameter {jax_path} has no HF key rule")
        rule, groups = hit
        a = to_host(var.get_value())
        if out_dtype is not None:
            a = a.astype(out_dtype)
        if rule.kind == "expert_linear":
            for e in range(a.shape[0]):
                yield rule.hf.format(expert=e, **groups), rule.to_hf(a[e])
        else:
            yield rule.hf.format(**groups), rule.to_hf(a)


def save(model: CausalLM, out_dir: str | os.PathLike, *, dtype: str | None = None,
         source_dir: str | os.PathLike | None = None, max_shard_bytes: int = 5 * 2**30) -> Path:
    """Write an HF directory (sharded safetensors + index + config + tokenizer/generation files) atomically.

    `dtype` converts on the way out (e.g. fp32 master weights → bfloat16); default keeps the parameter dtype.
    Tokenizer and generation files come from `source_dir`, default the directory the model was loaded from."""
    out = Path(out_dir)
    cfg = model.cfg
    source = Path(source_dir) if source_dir else (Path(cfg.source_dir) if cfg.source_dir else None)
    is_writer = jax.process_index() == 0
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if is_writer:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)

    shards: list[list[str]] = []
    weight_map: dict[str, str] = {}
    total = 0
    pending: list[tuple[str, np.ndarray]] = []
    pending_bytes = 0

    def flush():
        nonlocal pending, pending_bytes
        if pending and is_writer:
            write_safetensors(tmp / f"shard-{len(shards):05d}.part", pending)
        shards.append([k for k, _ in pending])
        pending, pending_bytes = [], 0

    out_dtype = None
    for key, t in hf_tensors(model, dtype):
        out_dtype = t.dtype
        if pending and pending_bytes + t.nbytes > max_shard_bytes:
            flush()
        pending.append((key, t))
        pending_bytes += t.nbytes
        total += t.nbytes
    flush()
    if not is_writer:
        return out

    n = len(shards)
    for i, keys in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        (tmp / f"shard-{i:05d}.part").rename(tmp / name)
        weight_map.update({k: name for k in keys})
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items(), key=lambda kv: _natural(kv[0])))}
    (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")

    hf_config = dict(cfg.hf_config)
    hf_config["architectures"] = [cfg.architecture]
    dtype_name = {np.dtype(np.float32): "float32", np.dtype(ml_dtypes.bfloat16): "bfloat16",
                  np.dtype(np.float16): "float16"}.get(out_dtype, "float32")
    hf_config["dtype"] = dtype_name
    if "torch_dtype" in hf_config:
        hf_config["torch_dtype"] = dtype_name
    (tmp / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
    if source is not None:
        for name in SIDE_FILES:
            if (source / name).exists():
                shutil.copy2(source / name, tmp / name)
    if not (tmp / "generation_config.json").exists():
        gen = {k: hf_config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if hf_config.get(k) is not None}
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")

    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(out)
    return out
