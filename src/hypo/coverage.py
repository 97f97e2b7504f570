"""`hypo coverage`: how well a preference dataset covers what the reference and a policy say.

The paper (arXiv 2406.01462) separates *global* coverage (the data covers every response any
candidate policy could put mass on; what DPO needs) from *partial* coverage (the data covers a
KL ball around π_ref; enough for online RL and HyPO, which penalise the reverse KL on the policy's
own samples). This module measures, on N pairs (x, y+, y−) with k samples per prompt:

1. log π_ref of the data's chosen and rejected responses against log π_ref of the reference's own
   samples (sequence totals and per token): data far in the reference's low-probability tail is
   data the reference would not have said;
2. with a policy π: the distribution of r = log π(y|x) − log π_ref(y|x) over π's samples, its mean
   (the reverse-KL estimate), and the share of samples (and of prompts) beyond ``kl_radius`` nats:
   the part of π's behaviour outside a KL ball around π_ref, which offline data near π_ref does not
   constrain; plus π_ref's log-likelihood of π's samples and the log-ratios of the data itself.

Writes ``coverage.json``, ``report.md`` (with a "what this means" section) and PNG plots.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import ConfigError
from .data import load_preferences, tokenize_pairs
from .evaluate import load_pair, sample_all
from .logprobs import batched_logps, sequence_logps
from .losses import reverse_kl_estimate
from .reporting import fmt, histogram, json_safe, md_table, summary
from .sampling import OnlineSampler

TAIL = 0.05  # "low-probability tail": below this quantile of the reference's own samples


@dataclass
class CoverageSettings:
    dataset: str  # preference data (any source data.load_preferences accepts)
    ref_model: str | None = None  # default: the base of a LoRA adapter given as --model
    model: str | None = None  # the policy (folder / hub id / LoRA adapter folder); optional
    out: str = "hypo-coverage"
    split: str = "train"
    num_pairs: int = 64  # 0 = all
    samples_per_prompt: int = 4
    max_new_tokens: int = 64
    max_length: int = 1024
    max_prompt_length: int = 512
    kl_radius: float = 1.0
    batch_size: int = 8
    seed: int = 0
    dtype: str = "float32"
    device: str = "auto"
    gguf_file: str | None = None  # GGUF of ref_model (or of model without ref_model)
    disable_progress_bar: bool = False


def _tail_share(values: list[float], threshold: float) -> float:
    return sum(v < threshold for v in values) / max(len(values), 1)


@torch.no_grad()
def run_coverage(s: CoverageSettings) -> dict:
    """Compute the coverage diagnostics of the module docstring; returns the JSON written to out/."""
    if s.samples_per_prompt < 1 or s.num_pairs < 0 or s.batch_size < 1 or s.max_new_tokens < 1:
        raise ConfigError("--samples_per_prompt, --batch_size and --max_new_tokens must be ≥ 1 and "
                          "--num_pairs ≥ 0 (0 = all).")
    if s.kl_radius < 0:
        raise ConfigError(f"--kl_radius {s.kl_radius}: must be ≥ 0 (nats).")
    if not 1 <= s.max_prompt_length < s.max_length:
        raise ConfigError(f"--max_prompt_length {s.max_prompt_length} must be ≥ 1 and below "
                          f"--max_length {s.max_length} to leave room for a response: lower "
                          "--max_prompt_length or raise --max_length.")
    if s.model is None and s.ref_model is None:
        raise ConfigError("pass --ref_model (and optionally --model, the trained policy).")
    out = Path(s.out)
    pair, tok, names = load_pair(s.model, s.ref_model, s.dtype, s.device, s.gguf_file)
    examples, dropped = load_preferences(s.dataset, s.split)
    if s.num_pairs > 0:
        examples = examples[: s.num_pairs]
    pairs, _ = tokenize_pairs(examples, tok, s.max_length, s.max_prompt_length)
    device = next(pair.policy.parameters()).device
    pad, k, quiet = tok.pad_token_id, s.samples_per_prompt, s.disable_progress_bar
    bs = s.batch_size * k
    prompts = [p.prompt_ids for p in pairs]
    P = len(prompts)

    def ref_ll(ps, rs):
        return batched_logps(pair.reference_logps, ps, rs, pad, bs, device)

    chosen = ref_ll(prompts, [p.chosen_ids for p in pairs])
    rejected = ref_ll(prompts, [p.rejected_ids for p in pairs])
    with pair.reference_view() as ref_module:
        ref_samples = sample_all(OnlineSampler(tok, k, s.max_new_tokens, s.seed + 1), ref_module,
                                 prompts, s.batch_size, "reference", quiet)
    ref_self = ref_ll(ref_samples.prompt_ids, ref_samples.response_ids)

    def per_token(values: torch.Tensor, responses: list[list[int]]) -> list[float]:
        return (values / torch.tensor([max(len(r), 1) for r in responses], dtype=values.dtype)).tolist()

    series = {"chosen": chosen.tolist(), "rejected": rejected.tolist(),
              "reference samples": ref_self.tolist()}
    series_tok = {"chosen": per_token(chosen, [p.chosen_ids for p in pairs]),
                  "rejected": per_token(rejected, [p.rejected_ids for p in pairs]),
                  "reference samples": per_token(ref_self, ref_samples.response_ids)}
    policy = None
    log_ratio: list[float] = []
    if s.model is not None:
        pol = sample_all(OnlineSampler(tok, k, s.max_new_tokens, s.seed), pair.policy, prompts,
                         s.batch_size, "policy", quiet)
        pol_lp = batched_logps(lambda b: sequence_logps(pair.policy, b), pol.prompt_ids, pol.response_ids,
                           pad, bs, device)
        pol_ref = ref_ll(pol.prompt_ids, pol.response_ids)
        r = pol_lp - pol_ref
        log_ratio = r.tolist()
        per_prompt = r.view(P, k).mean(1)
        kl, kl_se = reverse_kl_estimate(pol_lp.view(P, k).mean(1), pol_ref.view(P, k).mean(1))
        series["policy samples"] = pol_ref.tolist()
        series_tok["policy samples"] = per_token(pol_ref, pol.response_ids)

        def data_ratio(responses):
            lp = batched_logps(lambda b: sequence_logps(pair.policy, b), prompts, responses, pad, bs, device)
            return lp - ref_ll(prompts, responses)

        policy = {
            "kl": kl, "kl_stderr": kl_se, "log_ratio": summary(log_ratio), "kl_radius": s.kl_radius,
            "share_samples_beyond_radius": sum(x > s.kl_radius for x in log_ratio) / len(log_ratio),
            "share_prompts_beyond_radius": float((per_prompt > s.kl_radius).float().mean()),
            "clipped": pol.clipped_ratio,
            "data_log_ratio": {"chosen": summary(data_ratio([p.chosen_ids for p in pairs]).tolist()),
                               "rejected": summary(data_ratio([p.rejected_ids for p in pairs]).tolist())},
        }
    cut = summary(series["reference samples"])[f"q{int(TAIL * 100):02d}"]
    cut_tok = summary(series_tok["reference samples"])[f"q{int(TAIL * 100):02d}"]
    result = {
        **names, "dataset": s.dataset, "num_pairs": P, "dropped_invalid": dropped,
        "samples_per_prompt": k, "max_new_tokens": s.max_new_tokens, "seed": s.seed,
        "ref_loglik": {name: summary(v) for name, v in series.items()},
        "ref_loglik_per_token": {name: summary(v) for name, v in series_tok.items()},
        "tail_quantile": TAIL,
        "tail_share": {name: _tail_share(v, cut) for name, v in series.items()
                       if name != "reference samples"},
        "tail_share_per_token": {name: _tail_share(v, cut_tok) for name, v in series_tok.items()
                                 if name != "reference samples"},
        "reference_clipped": ref_samples.clipped_ratio,
        "policy": policy,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "coverage.json").write_text(json.dumps(json_safe(result), indent=2) + "\n")
    histogram(out / "ref_loglik.png", series, "log π_ref(y|x): data vs samples", "nats (sequence)")
    histogram(out / "ref_loglik_per_token.png", series_tok, "log π_ref(y|x) per token",
              "nats per token")
    if policy:
        histogram(out / "log_ratio.png", {"policy samples": log_ratio},
                  "log π(y|x) − log π_ref(y|x) on policy samples", "log-ratio (nats)",
                  vlines={"KL radius": s.kl_radius, "mean (KL)": policy["kl"]})
    write_report(result, out)
    return result


def meaning(r: dict) -> list[str]:
    """The "what this means" paragraphs, with this run's numbers."""
    tail = r["tail_share"]
    pct = lambda x: f"{100 * x:.0f}%"  # noqa: E731
    lines = [
        f"**The data against the reference.** {pct(tail['chosen'])} of the chosen and "
        f"{pct(tail['rejected'])} of the rejected responses are less likely under π_ref than "
        f"{pct(1 - r['tail_quantile'])} of π_ref's own samples (by sequence log-likelihood; "
        f"{pct(r['tail_share_per_token']['chosen'])} / {pct(r['tail_share_per_token']['rejected'])} "
        "per token, which removes the length effect). A high share means the preference data lies "
        "where the reference rarely goes: the data then says little about the responses the "
        "reference — and a policy near it — actually produces.",
    ]
    p = r["policy"]
    if p is None:
        lines.append("No policy was given (--model), so the policy-side diagnostics were skipped. "
                     "Pass a trained model to see how far it moved from π_ref.")
    else:
        lines.append(
            f"**The policy against the reference.** The reverse KL(π‖π_ref) estimate is "
            f"{fmt(p['kl'])} ± {fmt(p['kl_stderr'])} nats. {pct(p['share_samples_beyond_radius'])} "
            f"of the policy's samples (and {pct(p['share_prompts_beyond_radius'])} of prompts, by "
            f"their mean) have log π − log π_ref above the radius {fmt(p['kl_radius'], 2)}: that is "
            "behaviour outside a KL ball around the reference. Offline data that covers only that "
            "ball (partial coverage) cannot tell DPO anything about it; DPO needs *global* coverage "
            "to keep it in check, while HyPO's reverse-KL penalty on online samples pulls exactly "
            "these samples back (arXiv 2406.01462, §4–5).")
        if "policy samples" in tail:
            lines.append(f"{pct(tail['policy samples'])} of the policy's samples fall in π_ref's "
                         "low-probability tail as defined above.")
        dc, dr = p["data_log_ratio"]["chosen"]["mean"], p["data_log_ratio"]["rejected"]["mean"]
        lines.append(
            f"On the data itself, log π − log π_ref averages {fmt(dc)} on chosen and {fmt(dr)} on "
            "rejected responses. When both are negative while the margin grows, the policy is "
            "moving mass away from *both* data responses to responses the data never shows — the "
            "coverage effect DPO users see as falling `logps/chosen`.")
    return lines


def write_report(r: dict, out: Path) -> Path:
    names = list(r["ref_loglik"])
    rows = [[n, r["ref_loglik"][n]["mean"], r["ref_loglik"][n]["q05"], r["ref_loglik"][n]["q50"],
             r["ref_loglik"][n]["q95"], r["ref_loglik_per_token"][n]["mean"]] for n in names]
    lines = [f"# hypo coverage: {r['dataset']}", "",
             f"Reference: `{r['ref_model']}` · policy: `{r['model']}` · {r['num_pairs']} pairs, "
             f"{r['samples_per_prompt']} samples per prompt, max_new_tokens {r['max_new_tokens']}",
             "", "## Reference log-likelihood (nats)", "",
             md_table(["responses", "mean", "q05", "median", "q95", "mean per token"], rows), "",
             "![ref log-likelihood](ref_loglik.png)", "", "![per token](ref_loglik_per_token.png)", ""]
    p = r["policy"]
    if p:
        lr = p["log_ratio"]
        lines += ["## Policy log-ratio on its own samples", "",
                  md_table(["reverse KL", "stderr", "q05", "median", "q95", "beyond radius (samples)",
                            "beyond radius (prompts)", "clipped"],
                           [[p["kl"], p["kl_stderr"], lr["q05"], lr["q50"], lr["q95"],
                             p["share_samples_beyond_radius"], p["share_prompts_beyond_radius"],
                             p["clipped"]]]),
                  "", "![log-ratio](log_ratio.png)", ""]
    lines += ["## What this means", ""] + [x + "\n" for x in meaning(r)]
    if r["reference_clipped"] > 0 or (p and p["clipped"] > 0):
        lines.append("Samples cut at max_new_tokens are shorter, so their log-likelihood is "
                     "higher than a finished response's; raise --max_new_tokens if the clipped "
                     "share is large.\n")
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
