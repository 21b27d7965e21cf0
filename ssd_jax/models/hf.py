"""HF safetensors directories ⇄ NNX models.

`load_model(spec, mesh, purpose)` is the one way the stages go from a `config.ModelSpec` to a model, and holds the
dtype policy; `load(path, **options)` below it takes ModelConfig options directly (tests, benchmarks).

Loading streams one tensor at a time: each JAX parameter is assembled on the host from its HF tensor(s) (each read
from its safetensors file on its own), transformed, and placed straight onto its target sharding; the
host never holds more than one parameter. Export writes sharded safetensors + index + config + tokenizer files
to a temporary directory and renames it into place, so a killed export leaves nothing half-written.

The safetensors format (8-byte little-endian header length, JSON header, raw little-endian data) is read and
written here directly so that bf16/fp8 checkpoints need neither torch nor a full copy.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
import re
import shutil
import struct
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from ssd_jax import bundled, distributed
from ssd_jax.errors import CheckpointError
from ssd_jax.io_utils import replace_dir
from ssd_jax.models import family_for
from ssd_jax.models.config import ModelConfig
from ssd_jax.models.transformer import CausalLM
from ssd_jax.sharding import param_sharding, path_str

if TYPE_CHECKING:
    from jax.sharding import Mesh

    from ssd_jax.config import ModelSpec

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
    """One safetensors file; `get(name)` reads one tensor into a fresh array.

    Read, not memory-mapped: pages of a mapped file count in the process's resident set until it is unmapped, so a
    mapped checkpoint adds its whole size to the peak while the model is being built; a read tensor is freed as soon
    as its slice is placed."""

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

    def keys(self) -> list[str]:
        return list(self.entries)

    def get(self, name: str) -> np.ndarray:
        e = self.entries[name]
        if e["dtype"] not in ST_DTYPES:
            raise CheckpointError(f"{self.path}: tensor {name} has unsupported dtype {e['dtype']}")
        start, end = e["data_offsets"]
        dtype = ST_DTYPES[e["dtype"]]
        raw = np.empty(max(end - start, 0), np.uint8)
        with open(self.path, "rb") as f:
            f.seek(self._base + start)
            got = f.readinto(memoryview(raw))
        if got != raw.size or raw.size != dtype.itemsize * math.prod(e["shape"]):
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

    def num_params(self) -> int:
        """Elements of every tensor, from the headers alone."""
        return sum(math.prod(e["shape"]) for f in self.files.values() for e in f.entries.values())

    def get(self, key: str) -> np.ndarray:
        return self.files[self.where[key]].get(key)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.files[self.where[key]].entries[key]["shape"])

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
    """One line of a family's key map. `{layer}` in the JAX template is a position in a layer stack (the JAX
    parameter is stacked over layers); `{expert}` in the HF template is an index along the stacked expert axis."""

    hf: str
    jax: str
    kind: str  # one of KINDS

    KINDS = ("same", "flat", "linear", "linear_in2")

    def __post_init__(self):
        if self.kind not in self.KINDS:
            raise ValueError(f"key rule {self.hf!r}: kind {self.kind!r} is not one of {self.KINDS}")

    @property
    def hf_re(self) -> re.Pattern:
        return _template_regex(self.hf)

    @property
    def jax_re(self) -> re.Pattern:
        return _template_regex(self.jax)

    def stack_dims(self) -> tuple[str, ...]:
        """Names of the leading JAX axes that index separate HF tensors, outermost first."""
        return tuple(name for name, where in (("layer", self.jax), ("expert", self.hf)) if f"{{{name}}}" in where)

    def n_in(self) -> int:
        return 2 if self.kind == "linear_in2" else 1

    def hf_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of the HF tensor that fills one (unstacked) JAX slice of `shape`."""
        if self.kind == "same":
            return tuple(shape)
        if self.kind == "flat":
            return (math.prod(shape),)
        n = self.n_in()
        return (math.prod(shape[n:]), math.prod(shape[:n]))

    def to_jax(self, t: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """HF tensor → JAX layout. Only transposes and splits axes, so a memory-mapped tensor stays a view and a
        caller can slice out one device's shard before anything is copied."""
        if self.kind in ("same", "flat"):
            return t.reshape(shape)
        return t.T.reshape(shape)

    def to_hf(self, a: np.ndarray) -> np.ndarray:
        if self.kind == "same":
            return a
        if self.kind == "flat":
            return a.reshape(-1)
        n = self.n_in()
        return np.ascontiguousarray(a.reshape(math.prod(a.shape[:n]), -1).T)


def key_rules(family) -> list[KeyRule]:
    """The family's key map (its KEY_RULES table), which both loading and export read."""
    return [KeyRule(hf, jx, kind) for hf, jx, kind in family.KEY_RULES]


def _match_hf(cfg: ModelConfig, rules: list[KeyRule], key: str) -> tuple[KeyRule, str, tuple[int, ...]] | None:
    """(rule, JAX parameter path, index along its stack axes) of an HF key."""
    for rule in rules:
        m = rule.hf_re.match(key)
        if m:
            groups = {k: int(v) for k, v in m.groupdict().items()}
            index = []
            if "layer" in groups:
                if not 0 <= groups["layer"] < cfg.num_layers:
                    return rule, f"<layer {groups['layer']}>", ()
                groups["layer"], i = cfg.layer_slot(groups["layer"])
                index.append(i)
            if "expert" in groups:
                index.append(groups.pop("expert"))
            return rule, rule.jax.format(**groups), tuple(index)
    return None


def _match_jax(rules: list[KeyRule], path: str) -> tuple[KeyRule, dict] | None:
    for rule in rules:
        m = rule.jax_re.match(path)
        if m:
            return rule, {k: int(v) for k, v in m.groupdict().items()}
    return None


def _hf_slots(cfg: ModelConfig, rule: KeyRule, groups: dict, shape: tuple[int, ...]) -> list[tuple[str, tuple]]:
    """(HF key, stack index) for every HF tensor that fills the JAX parameter `rule.jax.format(**groups)`."""
    dims = rule.stack_dims()
    out = []
    for index in itertools.product(*(range(n) for n in shape[: len(dims)])):
        names = dict(zip(dims, index))
        if "layer" in names:
            names["layer"] += cfg.stack_start(groups["layer"])
        out.append((rule.hf.format(**{**groups, **names}), index))
    return out


# ----------------------------------------------------------------------------------------------------------------
# config
# ----------------------------------------------------------------------------------------------------------------


def load_tokenizer(path: str | os.PathLike):
    """The tokenizer of an HF directory: the class its tokenizer_config.json names, as `AutoTokenizer` picks it.

    Why not `AutoTokenizer` itself: in transformers 5 its module imports torch (through the model configs), 0.35 GB
    of resident memory in every JAX stage that only needs token ids. Directories that name no class, or ship their
    own tokenizer code, go through `AutoTokenizer` unchanged."""
    import transformers

    d = Path(path)
    meta = {}
    if (d / "tokenizer_config.json").exists():
        try:
            meta = json.loads((d / "tokenizer_config.json").read_text())
        except ValueError as e:
            raise CheckpointError(f"{d / 'tokenizer_config.json'}: not valid JSON ({e})") from None
    name = meta.get("tokenizer_class") if isinstance(meta, dict) and not meta.get("auto_map") else None
    if isinstance(name, str):
        name = "TokenizersBackend" if name == "PythonBackend" else name
        for candidate in (name, name.removesuffix("Fast"), name + "Fast"):
            cls = getattr(transformers, candidate, None)
            if isinstance(cls, type) and hasattr(cls, "from_pretrained"):
                return cls.from_pretrained(str(d))
    return transformers.AutoTokenizer.from_pretrained(str(d))


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
    raw = _json_object(cfg_file)
    archs = raw.get("architectures")
    if not archs or not isinstance(archs, list):
        raise CheckpointError(f"{cfg_file}: key 'architectures' is missing; expected e.g. [\"LlamaForCausalLM\"]")
    family_for(archs[0], where=f"{cfg_file}: key 'architectures'")
    return raw


class HFConfig:
    """config.json's keys as attributes, over the family's transformers defaults (`HF_DEFAULTS`) and with its
    attribute aliases (`HF_ALIASES`, transformers' `attribute_map`).

    Not transformers' own config classes: importing them imports torch (0.2 GB resident in every JAX process).
    tests/models/test_hf_config.py checks that this gives the same ModelConfig as transformers' classes."""

    def __init__(self, raw: dict, family):
        values = {**family.HF_DEFAULTS, **raw}
        for attr, stored in family.HF_ALIASES.items():
            if stored in raw:
                values[attr] = raw[stored]
        self._values = values

    def __getattr__(self, key: str):
        try:
            return self.__dict__["_values"][key]
        except KeyError:
            raise AttributeError(key) from None

    def to_dict(self) -> dict:
        return dict(self._values)


def model_config(path: str | os.PathLike, *, dtype: str = "float32", param_dtype: str | None = None,
                 **options) -> ModelConfig:
    """Read an HF directory's config.json into a ModelConfig (absent keys take transformers' defaults).

    `param_dtype` defaults to `dtype`; `options` are ModelConfig.with_options run-time settings (remat, moe_impl…)."""
    raw = read_hf_config(path)
    family = family_for(raw["architectures"][0])
    try:
        cfg = family.config_from_hf(HFConfig(raw, family))
    except (AttributeError, KeyError) as e:
        raise CheckpointError(f"{Path(path) / 'config.json'}: missing key {e}") from None
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{Path(path) / 'config.json'}: a value has the wrong type ({e})") from None
    cfg = replace(cfg, hf_config=raw, source_dir=str(Path(path).resolve()))
    return cfg.with_options(dtype=dtype, param_dtype=param_dtype or dtype, **options)


# ----------------------------------------------------------------------------------------------------------------
# load
# ----------------------------------------------------------------------------------------------------------------


def load(path: str | os.PathLike, *, mesh=None, **options) -> CausalLM:
    """Build the NNX model of an HF directory, each parameter placed on its sharding (or the default device);
    `options` as `model_config` takes them (the stages go through `load_model`).

    Each device's shard is assembled straight from the memory-mapped HF tensors, so the host holds one shard at a
    time, never a whole stacked parameter (48 layers × 128 experts of Qwen3-30B-A3B would be 39 GB in fp32)."""
    d = Path(path)
    cfg = model_config(d, **options)
    ckpt = Checkpoint(d)
    rules = key_rules(family_for(cfg.architecture))

    abstract = nnx.eval_shape(lambda: CausalLM(cfg, nnx.Rngs(0), mesh=mesh))
    graphdef, state = nnx.split(abstract)
    flat = dict(nnx.to_flat_state(state))
    targets = {path_str(p): p for p in flat}

    # Plan: which HF tensor fills which slice of which parameter.
    sources: dict[str, dict[tuple, str]] = {k: {} for k in targets}
    for key in ckpt.keys():
        if IGNORED_KEYS.search(key):
            continue
        hit = _match_hf(cfg, rules, key)
        if hit is None:
            raise CheckpointError(f"{ckpt.file_of(key)}: tensor {key!r} matches no {cfg.architecture} key rule")
        rule, jax_path, index = hit
        if jax_path not in targets:
            if key == "lm_head.weight" and cfg.tie_word_embeddings:
                continue  # tied checkpoints may still carry a copy of the embedding; HF ignores it too
            raise CheckpointError(
                f"{ckpt.file_of(key)}: tensor {key!r} has no place in this model "
                f"(config.json describes a {cfg.architecture} without a slot for it at {jax_path})"
            )
        shape = flat[targets[jax_path]].get_value().shape
        want = rule.hf_shape(shape[len(index):])
        if ckpt.shape(key) != want:
            raise CheckpointError(
                f"{ckpt.file_of(key)}: tensor {key!r} has shape {ckpt.shape(key)}, expected {want} from config.json"
            )
        sources[jax_path][index] = key

    np_param_dtype = np.dtype(jnp.dtype(cfg.param_dtype))
    for jax_path, src in sources.items():
        var = flat[targets[jax_path]]
        shape = tuple(var.get_value().shape)
        hit = _match_jax(rules, jax_path)
        expected = _hf_slots(cfg, *hit, shape) if hit else []
        missing = [k for k, index in expected if index not in src]
        if missing or not expected:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            what = repr(missing[0]) + more if missing else "(no key rule)"
            raise CheckpointError(f"{d}: checkpoint is missing tensor {what} for parameter {jax_path}")
        build = functools.partial(_build_shard, ckpt, src, hit[0], shape, np_param_dtype)
        var.set_value(jax.make_array_from_callback(shape, param_sharding(jax_path, shape, mesh), build))
    return nnx.merge(graphdef, nnx.from_flat_state(list(flat.items())))


def _build_shard(ckpt: "Checkpoint", src: dict[tuple, str], rule: KeyRule, shape: tuple[int, ...], dtype: np.dtype,
                 idx: tuple) -> np.ndarray:
    """One device's slice `idx` of a parameter, read tensor by tensor from the checkpoint."""
    idx = tuple(idx) + (slice(None),) * (len(shape) - len(idx))
    lead = len(rule.stack_dims())
    ranges = [range(*idx[j].indices(shape[j])) for j in range(lead)]
    rest = idx[lead:]
    out = np.empty(tuple(len(r) for r in ranges) + tuple(len(range(*s.indices(n))) for s, n in zip(rest, shape[lead:])),
                   dtype)
    for pos, index in zip(itertools.product(*(range(len(r)) for r in ranges)), itertools.product(*ranges)):
        out[pos] = rule.to_jax(ckpt.get(src[index]), shape[lead:])[rest]
    return out


Purpose = Literal["train", "sample", "score", "export"]


def options_for(spec: ModelSpec, purpose: Purpose) -> dict[str, Any]:
    """The ModelConfig.with_options that run `spec` for `purpose`: its dtypes (the policy is in load_model's
    docstring) and the layer layout of ModelSpec.run_options (a list of layers to decode with, stacks otherwise)."""
    compute, storage = {"train": (spec.dtype, spec.param_dtype), "sample": (spec.dtype, spec.dtype),
                        "score": (spec.dtype, spec.dtype), "export": (spec.param_dtype, spec.param_dtype)}[purpose]
    return {"dtype": compute, "param_dtype": storage, **spec.run_options(decoding=purpose == "sample")}


def load_model(spec: ModelSpec, mesh: Mesh | None, purpose: Purpose, *, weights: bool = True) -> CausalLM:
    """The model `spec.path` names (an HF directory, `bundled:<name>` or a hub id), each parameter placed on its
    sharding on `mesh` (None: the default device), set up for `purpose`.

    Every parameter is cast to the compute dtype where it is used, so the storage dtype only decides what is kept:
    - train: compute `dtype`, store `param_dtype`. The optimizer updates the stored weights, and bf16 masters would
      round away updates smaller than their last bit.
    - sample (sampling and evaluation): both `dtype`. No optimizer, and decoding is memory-bound: stored at the
      compute dtype, the weights give the same forward at half the bytes read per token in bf16.
    - score (parity, the fork/lock analysis): both `dtype`, as transformers holds the reference it is compared with.
    - export (a training checkpoint, or a conversion to HF/orbax): both `param_dtype`. Nothing is computed; the
      weights keep the dtype the training run stored them in, so a restore neither rounds nor widens them, and
      `save` converts on the way out.

    `weights=False` reads no tensor and places zeros: the target of an orbax restore, or a shape to compile with."""
    d = bundled.resolve_model(spec.path)
    options = options_for(spec, purpose)
    if weights:
        return load(d, mesh=mesh, **options)
    return _zeros(model_config(d, **options), mesh)


def _zeros(cfg: ModelConfig, mesh: Mesh | None) -> CausalLM:
    """A model of zeros placed on its shardings: a restore target that costs no checkpoint I/O."""
    abstract = nnx.eval_shape(lambda: CausalLM(cfg, nnx.Rngs(0), mesh=mesh))
    graphdef, state = nnx.split(abstract)
    flat = []
    for p, v in nnx.to_flat_state(state):
        a = v.get_value()
        flat.append((p, v.replace(jnp.zeros(a.shape, a.dtype, device=param_sharding(path_str(p), a.shape, mesh)))))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def _natural(s: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", s)]


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
    """(HF key, tensor) for every parameter, in HF naming and layout, layer by layer. A stacked parameter comes to
    the host one layer slice at a time (all of its experts at once)."""
    cfg = model.cfg
    rules = key_rules(family_for(cfg.architecture))
    out_dtype = np.dtype(jnp.dtype(dtype)) if dtype else None
    plan = []  # (HF layer or -1, JAX path, HF key, rule, stack index, value)
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        jax_path = path_str(path)
        hit = _match_jax(rules, jax_path)
        if hit is None:
            raise KeyError(f"parameter {jax_path} has no HF key rule")
        value = var.get_value()
        for key, index in _hf_slots(cfg, *hit, value.shape):
            layer = cfg.stack_start(hit[1]["layer"]) + index[0] if "layer" in hit[1] else -1
            plan.append((layer, _natural(jax_path), key, hit[0], index, value))
    cached: tuple = (None, None)
    for layer, jax_path, key, rule, index, value in sorted(plan, key=lambda p: (p[0], p[1], p[4])):
        whole = (jax_path, index[:1])
        if cached[0] != whole:  # one device-to-host copy per parameter and layer
            a = to_host(value[index[0]] if index else value)
            cached = (whole, a.astype(out_dtype) if out_dtype is not None else a)
        a = cached[1]
        yield key, rule.to_hf(a[index[1:]] if len(index) > 1 else a)


# ssd-jax's note in a model directory it trained: the run, step and the prompt format of its SFT data.
PROVENANCE = "ssd_jax.json"


def read_provenance(model_dir: str | os.PathLike) -> dict:
    """A model directory's PROVENANCE ({} for a model ssd-jax did not train)."""
    path = Path(model_dir) / PROVENANCE
    return _json_object(path) if path.exists() else {}


def _json_object(path: Path) -> dict:
    """A model directory's JSON file that must hold one object (config.json, PROVENANCE)."""
    try:
        doc = json.loads(path.read_text())
    except ValueError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return doc


def save(model: CausalLM, out_dir: str | os.PathLike, *, dtype: str | None = None,
         source_dir: str | os.PathLike | None = None, max_shard_bytes: int = 5 * 2**30,
         provenance: dict | None = None) -> Path:
    """Write an HF directory (sharded safetensors + index + config + tokenizer/generation files) atomically.

    `dtype` converts on the way out (e.g. fp32 master weights → bfloat16); default keeps the parameter dtype.
    Tokenizer and generation files come from `source_dir`, default the directory the model was loaded from.
    `provenance` (training runs) is written as PROVENANCE."""
    out = Path(out_dir)
    cfg = model.cfg
    source = Path(source_dir) if source_dir else (Path(cfg.source_dir) if cfg.source_dir else None)
    is_writer = distributed.is_writer()
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
        distributed.barrier(f"hf-save:{out}")  # return once process 0 has renamed the export into place
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

    if provenance is not None:
        (tmp / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n")
    replace_dir(tmp, out)
    distributed.barrier(f"hf-save:{out}")
    return out
