"""`ssd-jax sample`: problems → prompts → N samples each, appended to a resumable JSONL.

Each finished group of samples is appended and fsync'ed before the next group starts; on start the file is read
back (a line torn by a kill is cut off) and only the missing (problem, sample index) pairs are generated. Seeds are
per request, derived from (seed, problem id, sample index), so a resumed run draws what an uninterrupted one would
have drawn (JAX backend; vLLM's CPU/GPU kernels are deterministic per seed but not across versions).
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

from ssd_jax import bundled, distributed, faults, run_lock
from ssd_jax.config import ProblemSource, SampleConfig
from ssd_jax.data import problems as P
from ssd_jax.data.filters import read_samples
from ssd_jax.data.download import DATASETS, KIND_DATASET
from ssd_jax.data.prompts import messages, render
from ssd_jax.errors import ConfigError, UserError
from ssd_jax.io_utils import JsonlLog, atomic_write_text
from ssd_jax.memory import process_peak
from ssd_jax.sampling.types import Sampler


def check_problem_source(src: ProblemSource, key: str) -> None:
    """Refuse a problem path that is not there, naming the key, the dataset and how to get it: a run finds out
    before its first stage, not hours later."""
    if src.kind == "humaneval" and not src.path:
        return
    if not src.path:
        raise ConfigError(f"{key}.path: required for kind {src.kind!r}")
    if not Path(src.path).exists():
        ds = DATASETS[KIND_DATASET[src.kind]] if src.kind in KIND_DATASET else None
        hint = f"; expected {ds.what} ({ds.repo}): {ds.command(ds.folder_for(src.path))}" if ds else ""
        where = "" if Path(src.path).is_absolute() else f" (relative to {Path.cwd()})"
        raise UserError(f"{key}.path {src.path!r}: does not exist{where}{hint}")
    if src.decontaminate_against and not Path(src.decontaminate_against).exists():
        raise UserError(f"{key}.decontaminate_against {src.decontaminate_against!r}: does not exist")


def load_problems(src: ProblemSource) -> tuple[list[P.Problem], dict]:
    check_problem_source(src, "problems")
    report: dict = {"kind": src.kind, "path": src.path}
    if src.kind == "rstar":
        probs, rep = P.load_rstar_seed_sft(src.path, passed_only=src.passed_only, dedup=src.dedup)
        report.update(rep.to_dict())
    elif src.kind == "lcb":
        probs = P.load_livecodebench(src.path, release=src.release, window=src.window, start_date=src.start_date,
                                     end_date=src.end_date)
    elif src.kind == "humaneval":
        probs = P.load_humaneval(src.path or None)
    else:
        probs = P.load_jsonl(src.path)
    if src.decontaminate_against:
        ref = Path(src.decontaminate_against)
        eval_set = P.load_livecodebench(ref) if ref.is_dir() or "test" in ref.name else P.load_jsonl(ref)
        probs, report["decontaminated"] = P.decontaminate(probs, eval_set)
        report["decontaminated_against"] = {"path": str(ref), "problems": len(eval_set),
                                            "question_ids_sha256": P.question_ids_sha256(eval_set)}
    loaded = len(probs)
    probs = probs[src.skip :]
    if src.limit:
        probs = probs[: src.limit]
    report["problems"] = len(probs)
    if src.kind == "lcb":
        report.update(lcb_identity(src, loaded, probs))
    return probs, report


def lcb_identity(src: ProblemSource, loaded: int, probs: list[P.Problem]) -> dict:
    """What names an LCB problem set in the manifests and metrics: the window, the count it loaded (and the paper's
    count for a paper window), and the sha256 of the sorted question ids of the problems used (after skip/limit)."""
    window = P.LCB_WINDOWS.get(src.window) if src.window else None
    return {"release": src.release, "window": src.window, "start_date": window.start if window else src.start_date,
            "end_date": window.end if window else src.end_date, "loaded": loaded,
            "expected_problems": window.expected if window else None,
            "question_ids_sha256": P.question_ids_sha256(probs)}


def describe_problem_set(report: dict) -> str | None:
    """One line naming an LCB problem set (count, window, id hash), for the CLI; None for other sources."""
    if report.get("kind") != "lcb":
        return None
    window = f"window {report['window']}" if report.get("window") else "dates {} … {}".format(
        report.get("start_date") or "start", report.get("end_date") or "end")
    expected, loaded = report.get("expected_problems"), report.get("loaded", report["problems"])
    check = "" if expected is None else (" = the paper's count" if loaded == expected
                                         else f", WARNING: the paper's {report['window']} has {expected}")
    used = "" if report["problems"] == loaded else f"; {report['problems']} used (skip/limit)"
    return (f"LiveCodeBench problem set: {window} loaded {loaded} problems{check}{used}; release "
            f"{report.get('release') or 'all files present'}; question-id sha256 {report['question_ids_sha256']}")


def request_id(problem_id: str, sample_idx: int) -> int:
    return zlib.crc32(f"{problem_id}#{sample_idx}".encode()) & 0x7FFFFFFF


def sample_key(rec: dict) -> tuple[str, int]:
    return rec["problem_id"], int(rec["sample_idx"])


def SampleStore(path: str | os.PathLike, repair: bool = True) -> JsonlLog:
    """The samples file: a `JsonlLog` keyed by (problem_id, sample_idx)."""
    return JsonlLog(path, sample_key, "sample record", repair=repair)


def part_path(out: str | os.PathLike, rank: int, n: int) -> Path:
    """Process `rank`'s own samples in an n-process job, merged into `out` by process 0."""
    return Path(f"{out}.part-{rank:03d}-of-{n:03d}")


def merge_parts(store: JsonlLog, pairs: list[tuple[str, int]], n: int) -> int:
    """Process 0: append every part's samples that `store` lacks, in the canonical (problem, index) order, fsync'ed,
    then delete the parts. Killed midway, a rerun appends what is still missing (parts go only after the append)."""
    parts = [part_path(store.path, r, n) for r in range(n)]
    found: dict[tuple[str, int], dict] = {}
    for p in parts:
        if p.exists():
            for rec in SampleStore(p).records:
                found.setdefault(sample_key(rec), rec)
    missing = [found[k] for k in pairs if k in found and k not in store.done]
    if missing:
        store.append(missing)
    for p in parts:
        p.unlink(missing_ok=True)
    return len(missing)


def make_sampler(cfg: SampleConfig, model_dir: Path, tokenizer, max_new_tokens: int) -> Sampler:
    if cfg.backend == "vllm":
        from ssd_jax.sampling.vllm_sampler import VllmSampler

        v = cfg.vllm
        return VllmSampler(str(model_dir), max_model_len=v.max_model_len or cfg.max_prompt_len + max_new_tokens,
                           tensor_parallel_size=v.tensor_parallel_size, gpu_memory_utilization=v.gpu_memory_utilization,
                           max_num_seqs=v.max_num_seqs, enforce_eager=v.enforce_eager,
                           enable_expert_parallel=v.enable_expert_parallel)
    import jax

    from ssd_jax.models import hf
    from ssd_jax.sampling.jax_sampler import JaxSampler
    from ssd_jax.sharding import make_mesh

    # In a multi-process job each process decodes its own share on its own devices.
    mesh = make_mesh(cfg.mesh, devices=jax.local_devices())
    model = hf.load_model(cfg.model, mesh, "sample")
    return JaxSampler(model, tokenizer, batch_size=cfg.batch_size, max_prompt_len=cfg.max_prompt_len,
                      max_new_tokens=max_new_tokens, mesh=mesh if mesh.size > 1 else None)


REPLICA_ENV = "SSD_JAX_SAMPLE_REPLICA"  # "i/n": this process is replica i of n and samples share i


def run_replicas(cfg: SampleConfig, pending: int) -> None:
    """`vllm.replicas` engines as child processes (`ssd-jax sample`, share i of n each), each on its own
    `tensor_parallel_size` GPUs when there are GPUs; returns when all have finished."""
    import subprocess
    import sys

    from ssd_jax.config import dump_yaml

    n, tp = cfg.vllm.replicas, cfg.vllm.tensor_parallel_size
    if not pending:
        return
    gpus = [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    if not gpus:
        import torch

        gpus = [str(i) for i in range(torch.cuda.device_count())]
    if gpus and len(gpus) < n * tp:
        raise ConfigError(f"vllm.replicas={n} × tensor_parallel_size={tp} needs {n * tp} GPUs; {len(gpus)} visible")
    config = Path(f"{cfg.out}.replicas.yaml")
    dump_yaml(cfg, config)
    procs = []
    for i in range(n):
        env = dict(os.environ, **{REPLICA_ENV: f"{i}/{n}", run_lock.JOB_ENV: run_lock.job_token()})  # one job
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[i * tp : (i + 1) * tp])
        procs.append(subprocess.Popen([sys.executable, "-m", "ssd_jax.cli", "sample", "--config", str(config)],
                                      env=env))
    failed = [i for i, p in enumerate(procs) if p.wait() != 0]
    if failed:
        raise UserError(f"vLLM replica(s) {failed} of {n} failed; rerun to resume (finished samples are kept)")


def run_sample(cfg: SampleConfig, problems: list[P.Problem] | None = None, report: dict | None = None) -> dict:
    """Sample `decode.n` completions per problem into `cfg.out`; returns the manifest (also written next to it)."""
    decode_rec = cfg.decode.record()  # an invalid truncation is refused before anything loads
    if problems is None:
        problems, report = load_problems(cfg.problems)
    if not problems:
        raise UserError(f"no problems to sample from ({cfg.problems.kind}: {cfg.problems.path or 'default'})")
    model_dir = bundled.resolve_model(cfg.model.path)
    from ssd_jax.models.hf import load_tokenizer, read_hf_config

    read_hf_config(model_dir)
    tokenizer = load_tokenizer(model_dir)
    # Shares: in an n-process job (or as one of n vLLM replicas) each process samples every n-th (problem, index)
    # pair into its own part file; process 0 (or the replicas' parent) merges them into `out`.
    pairs = [(p, i) for p in problems for i in range(cfg.decode.n)]
    keys = [(p.id, i) for p, i in pairs]
    replica = os.environ.get(REPLICA_ENV)
    if replica:
        rank, n_proc = (int(x) for x in replica.split("/"))
    else:
        n_proc, rank = distributed.process_count(), distributed.process_index()
    merges = not replica and distributed.is_writer()
    if merges:
        store = SampleStore(cfg.out)
        merge_parts(store, keys, max(n_proc, cfg.vllm.replicas))  # a killed job's finished parts first
    distributed.barrier(f"sample-open:{cfg.out}")
    if not merges:
        store = SampleStore(cfg.out, repair=False)
    if cfg.backend == "vllm" and cfg.vllm.replicas > 1 and not replica:
        if n_proc > 1:
            raise ConfigError("vllm.replicas > 1 in a multi-process job: use one or the other")
        generated = len([k for k in keys if k not in store.done])
        run_replicas(cfg, generated)
        merge_parts(store, keys, cfg.vllm.replicas)
        n_proc, rank = 1, 0
        pairs = []  # all sampled by the replicas
    sink = store if n_proc == 1 else SampleStore(part_path(cfg.out, rank, n_proc))
    todo = [(p, i) for k, (p, i) in enumerate(pairs)
            if k % n_proc == rank and (p.id, i) not in store.done and (p.id, i) not in sink.done]
    if pairs:
        generated = len(todo)
    if todo:
        sampler = make_sampler(cfg, model_dir, tokenizer, cfg.decode.max_tokens)
        params = cfg.decode.params()
        progress = None
        if cfg.progress and rank == 0:
            from tqdm import tqdm

            total = len(pairs[rank::n_proc])
            progress = tqdm(total=total, initial=total - len(todo), desc="sample", unit="sample")
        # JAX: groups of a few batches, each appended when done. vLLM: every request in one submission, so its
        # scheduler keeps the GPU full (continuous batching), each completion appended as it finishes.
        group = len(todo) if cfg.backend == "vllm" else max(cfg.batch_size, 1) * 4

        def record(pi, rendered, c) -> dict:
            (p, i), (text, _) = pi, rendered
            return {"problem_id": p.id, "sample_idx": i, "prompt": text, "messages": messages(p, cfg.prompt),
                    "prompt_format": cfg.prompt.format, "response": c.text, "model": cfg.model.path, "decode": decode_rec,
                    "finish_reason": c.finish_reason, "n_tokens": len(c.token_ids), "round": cfg.round,
                    "backend": cfg.backend}

        try:
            for start in range(0, len(todo), group):
                chunk = todo[start : start + group]
                rendered = [render(p, cfg.prompt, tokenizer) for p, _ in chunk]
                stream = sampler.stream([ids for _, ids in rendered], params,
                                        request_ids=[request_id(p.id, i) for p, i in chunk])
                for finished in stream:
                    sink.append([record(chunk[j], rendered[j], c) for j, c in finished])
                    faults.point("sample.appended")
                    if progress is not None:
                        progress.update(len(finished))
        finally:
            if progress is not None:
                progress.close()
    in_parts = n_proc > 1 and not replica  # this job's processes each wrote a part file
    if in_parts:
        distributed.barrier(f"sample-generated:{cfg.out}")
    if merges:
        if in_parts:
            merge_parts(store, keys, n_proc)
        store.reorder(keys)  # (problem, index) order, however the completions arrived and however often resumed
    if in_parts:
        distributed.barrier(f"sample-merged:{cfg.out}")
    out = sink.path if replica else Path(cfg.out)  # a replica reports its own part; its parent merges
    samples = read_samples(out)
    reasons: dict[str, int] = {}
    for s in samples:
        reasons[s.get("finish_reason", "?")] = reasons.get(s.get("finish_reason", "?"), 0) + 1
    manifest = {"out": str(out), "samples": len(samples), "problems": report, "decode": decode_rec,
                "prompt": cfg.prompt.record(), "backend": cfg.backend, "model": cfg.model.path, "n": cfg.decode.n,
                "finish_reasons": reasons, "generated_this_run": generated,
                "replicas": cfg.vllm.replicas if cfg.backend == "vllm" else 1, "memory": process_peak()}
    if todo and getattr(sampler, "submitted", None) is not None:
        manifest["requests_per_engine_submission"] = sampler.submitted
    if merges:
        atomic_write_text(Path(cfg.out).with_suffix(".manifest.json"), json.dumps(manifest, indent=2) + "\n")
    return manifest
