"""`hypo eval`: a trained policy against its reference on a prompt set.

For P prompts and k samples per prompt from the policy π (and k from the reference π_ref):

- reverse KL(π‖π_ref): mean of r = logπ(y|x) − logπ_ref(y|x) over the policy's samples
  (``losses.reverse_kl_estimate`` on the per-prompt means, so the standard error is over prompts);
- response lengths and the share cut at ``max_new_tokens`` (clipped samples bias the estimate);
- with a reward model (``AutoModelForSequenceClassification``, num_labels=1, its OWN tokenizer):
  the mean score of both policies and the win rate of π against π_ref (sample i of π against
  sample i of π_ref on the same prompt; ties count ½). Responses are decoded to text with the
  policy's tokenizer and re-tokenized with the reward model's, so the two may differ;
- a sample table. Writes ``eval.json``, ``report.md`` and PNG plots to the output folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import ConfigError
from .data import load_prompts, tokenize_prompts
from .prefix import batched_response_logps, supports_prefix_sharing
from .losses import reverse_kl_estimate
from .modeling import DTYPE, PolicyPair, load_causal_lm, load_tokenizer, quiet_peft
from .progress import console, step_progress
from .reporting import fmt, histogram, json_safe, md_table, summary
from .sampling import OnlineSampler, OnlineSamples, sample_groups, samples_unbiased


@dataclass
class EvalSettings:
    model: str  # trained model folder / hub id, or a LoRA adapter folder
    prompts: str  # any file/folder/hub name that data.load_prompts accepts
    out: str = "hypo-eval"
    ref_model: str | None = None  # default: the adapter's base model; required for full models
    reward_model: str | None = None
    split: str = "train"
    num_prompts: int = 64  # 0 = all
    samples_per_prompt: int = 2
    max_new_tokens: int = 64
    max_prompt_length: int = 512
    temperature: float = 1.0
    batch_size: int = 8  # prompts per generation call; sequences per forward
    reward_max_length: int = 1024
    seed: int = 0
    dtype: str = "float32"
    device: str = "auto"
    gguf_file: str | None = None  # GGUF of ref_model (or of model without ref_model)
    table_rows: int = 8
    disable_progress_bar: bool = False
    prefix_sharing: bool = True  # each prompt computed once for its k samples (hypo.prefix)


# ---- loading --------------------------------------------------------------------------------------

def _adapter_base(name: str) -> str | None:
    """The base model named in a LoRA adapter's adapter_config.json, or None for a full model."""
    path = Path(name) / "adapter_config.json"
    if not path.is_file():
        return None
    base = json.loads(path.read_text()).get("base_model_name_or_path")
    if not base:
        raise ConfigError(f"{path}: no base_model_name_or_path; pass --ref_model and set it.")
    return base


def run_reference(name: str) -> str | None:
    """The model a hypo run started from (``model_name_or_path`` in its hypo_config.json, or the
    converted folder of its ``gguf_file``), for a hypo output folder or its ``merged`` subfolder;
    None otherwise."""
    folder = Path(name)
    for path in (folder / "hypo_config.json", folder.parent / "hypo_config.json"):
        if path.is_file() and (path.parent == folder or folder.name == "merged"):
            try:
                saved = json.loads(path.read_text())
            except ValueError:
                raise ConfigError(f"{path} is not valid JSON; pass --ref_model explicitly.") from None
            if saved.get("gguf_file"):
                from .gguf import model_folder

                return model_folder(saved.get("model_name_or_path"), saved["gguf_file"])
            return saved.get("model_name_or_path")
    return None


def check_sources(model: str | None, ref_model: str | None) -> None:
    """Refuse missing local folders and models without a causal-LM head before loading weights."""
    from .preflight import check_causal_lm, check_model_source

    for name, flag in ((model, "--model"), (ref_model, "--ref_model")):
        if name:
            config = check_model_source(name, flag, flag)
            if config is not None:
                check_causal_lm(config, name, flag)


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_pair(model: str | None, ref_model: str | None, dtype: str = "float32",
              device: str = "auto", gguf_file: str | None = None) -> tuple[PolicyPair, object, dict]:
    """(policy pair, tokenizer, names) for a trained model and its reference.

    - LoRA adapter folder: the policy is PeftModel(base, adapter); without ``ref_model`` the
      reference is the base with the adapter disabled (no second copy of the weights).
    - full model: ``ref_model`` is required and loaded as a frozen copy.
    - ``model`` None (coverage of the reference alone): the policy IS the reference.
    - ``gguf_file``: a GGUF file of ``ref_model`` (or of ``model`` when ``ref_model`` is None),
      converted once into a cached standard folder (``hypo.gguf``).
    """
    if gguf_file:
        from .gguf import model_folder

        if ref_model:
            ref_model = model_folder(ref_model, gguf_file)
        else:
            model = model_folder(model, gguf_file)
    if dtype not in DTYPE and dtype != "auto":
        raise ConfigError(f"--dtype {dtype!r}: use one of {', '.join(DTYPE)} or auto.")
    dev = pick_device(device)
    check_sources(model, ref_model)
    base = _adapter_base(model) if model else None
    if model and base is None and not ref_model:
        ref_model = run_reference(model)  # a full fine-tune by hypo: its starting model
        if ref_model:
            console.print(f"reference: {ref_model} (model_name_or_path of the run in {model})")
            check_sources(None, ref_model)
    if model is None:
        if not ref_model:
            raise ConfigError("pass --ref_model (the reference / SFT model folder or hub id).")
        ref = load_causal_lm(ref_model, dtype).to(dev)
        ref.requires_grad_(False)
        names = {"model": None, "ref_model": ref_model, "base_model": None}
        return PolicyPair(ref, ref, is_peft=False), load_tokenizer(ref_model), names
    if base is None and not ref_model:
        raise ConfigError(f"{model} is a full model (no adapter_config.json) and not a hypo output "
                          "folder (no hypo_config.json), so its reference is unknown: pass "
                          "--ref_model with the reference / SFT model it started from.")
    if base is not None:
        from peft import PeftModel

        with quiet_peft():
            policy = PeftModel.from_pretrained(load_causal_lm(base, dtype), model).eval()
    else:
        policy = load_causal_lm(model, dtype)
    policy.requires_grad_(False)
    policy.to(dev)
    reference = None
    if ref_model:
        reference = load_causal_lm(ref_model, dtype).to(dev)
        reference.requires_grad_(False)
    try:
        tokenizer = load_tokenizer(model)
    except ConfigError:  # adapter folders saved without a tokenizer: use the base's
        tokenizer = load_tokenizer(base or ref_model)
    names = {"model": model, "ref_model": ref_model or base, "base_model": base}
    return PolicyPair(policy, reference, is_peft=base is not None and reference is None), tokenizer, names


def load_prompt_set(name: str, split: str, limit: int, tokenizer, max_prompt_length: int):
    """(prompt examples, prompt token ids), the first ``limit`` prompts (0 = all)."""
    examples, _ = load_prompts(name, split)
    if limit > 0:
        examples = examples[:limit]
    return examples, tokenize_prompts(examples, tokenizer, max_prompt_length)


# ---- sampling and log-probs in batches ------------------------------------------------------------

def sample_all(sampler: OnlineSampler, model, prompt_ids: list[list[int]], batch_size: int,
               label: str, quiet: bool) -> OnlineSamples:
    """k samples for every prompt, generated ``batch_size`` prompts at a time (prompt-major)."""
    parts = []
    with step_progress(f"sampling ({label})", len(prompt_ids), quiet) as advance:
        for start in range(0, len(prompt_ids), batch_size):
            chunk = prompt_ids[start: start + batch_size]
            parts.append(sampler.sample(model, chunk))
            advance(len(chunk))
    return OnlineSamples([p for s in parts for p in s.prompt_ids],
                         [r for s in parts for r in s.response_ids],
                         [c for s in parts for c in s.clipped], sampler.k)


# ---- reward model -------------------------------------------------------------------------------

def prompt_text(prompt) -> str:
    """A prompt (text or chat messages) as plain text."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt) + "\nassistant: "


class RewardScorer:
    """Scores (prompt, response text) with a sequence-classification reward model and its own
    tokenizer. Conversational prompts use the reward model's chat template when it has one;
    otherwise the input is prompt text + response text."""

    def __init__(self, name: str, dtype: str = "float32", device: str = "auto",
                 max_length: int = 1024):
        from transformers import AutoModelForSequenceClassification

        from .preflight import check_model_source

        check_model_source(name, "--reward_model")  # a missing folder: say so, before the tokenizer
        self.tokenizer = load_tokenizer(name)
        self.tokenizer.truncation_side = "left"  # keep the response, cut the start of the prompt
        kwargs = {} if dtype == "auto" else {"dtype": DTYPE[dtype]}
        try:
            self.model = AutoModelForSequenceClassification.from_pretrained(name, **kwargs)
        except Exception as err:  # noqa: BLE001 - re-raised with the fix
            raise ConfigError(f"could not load the reward model {name!r}: {err}. It must be an "
                              "AutoModelForSequenceClassification folder or hub id.") from None
        if self.model.config.num_labels != 1:
            raise ConfigError(f"reward model {name!r} has num_labels={self.model.config.num_labels}; "
                              "a reward model gives one score per sequence (num_labels=1).")
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.device = pick_device(device)
        self.model.to(self.device).eval()
        self.max_length = max_length

    def text(self, prompt, response: str) -> tuple[str, bool]:
        """(input text, whether it already carries special tokens)."""
        if isinstance(prompt, list) and getattr(self.tokenizer, "chat_template", None):
            messages = prompt + [{"role": "assistant", "content": response}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False), True
        return prompt_text(prompt) + response, False

    @torch.no_grad()
    def score(self, prompts: list, responses: list[str], batch_size: int = 8) -> list[float]:
        scores = []
        for start in range(0, len(prompts), batch_size):
            texts = [self.text(p, r) for p, r in zip(prompts[start: start + batch_size],
                                                     responses[start: start + batch_size])]
            templated = texts[0][1]
            enc = self.tokenizer([t for t, _ in texts], return_tensors="pt", padding=True,
                                 truncation=True, max_length=self.max_length,
                                 add_special_tokens=not templated).to(self.device)
            scores += self.model(**enc).logits[:, 0].float().cpu().tolist()
        return scores


def win_rate(policy_scores: list[float], reference_scores: list[float]) -> tuple[float, float, float]:
    """(win rate, its standard error, tie share) of paired scores; a tie counts ½."""
    outcomes = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(policy_scores, reference_scores)]
    s = summary(outcomes)
    ties = sum(o == 0.5 for o in outcomes) / max(len(outcomes), 1)
    return s["mean"], s["stderr"], ties


# ---- the evaluation -------------------------------------------------------------------------------

def _validate(s: EvalSettings) -> None:
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(msg)

    need(s.samples_per_prompt >= 1, f"--samples_per_prompt {s.samples_per_prompt}: must be ≥ 1.")
    need(s.max_new_tokens >= 1, f"--max_new_tokens {s.max_new_tokens}: must be ≥ 1.")
    need(s.num_prompts >= 0, f"--num_prompts {s.num_prompts}: must be ≥ 0 (0 = all).")
    need(s.batch_size >= 1, f"--batch_size {s.batch_size}: must be ≥ 1.")
    need(s.max_prompt_length >= 1, f"--max_prompt_length {s.max_prompt_length}: must be ≥ 1.")
    need(s.temperature > 0, f"--temperature {s.temperature}: must be > 0.")


@torch.no_grad()
def run_eval(s: EvalSettings) -> dict:
    """Run the evaluation described in the module docstring; returns the JSON written to out/."""
    _validate(s)
    out = Path(s.out)
    pair, tok, names = load_pair(s.model, s.ref_model, s.dtype, s.device, s.gguf_file)
    examples, prompt_ids = load_prompt_set(s.prompts, s.split, s.num_prompts, tok, s.max_prompt_length)
    scorer = RewardScorer(s.reward_model, s.dtype, s.device, s.reward_max_length) if s.reward_model else None
    device = next(pair.policy.parameters()).device
    quiet, k = s.disable_progress_bar, s.samples_per_prompt
    if s.temperature != 1.0:
        console.print("[yellow]warning:[/] temperature ≠ 1 samples from a different policy: the KL "
                      "estimate is biased.")

    def sampler(seed: int) -> OnlineSampler:
        return OnlineSampler(tok, k, s.max_new_tokens, seed, s.temperature)

    pol = sample_all(sampler(s.seed), pair.policy, prompt_ids, s.batch_size, "policy", quiet)
    with pair.reference_view() as ref_module:
        ref = sample_all(sampler(s.seed + 1), ref_module, prompt_ids, s.batch_size, "reference", quiet)
    # Each prompt once for its k samples (hypo.prefix), where the model takes the block mask.
    groups = sample_groups(pol)
    shared = s.prefix_sharing and supports_prefix_sharing(pair.policy, groups[:2], tok.pad_token_id)[0]
    pol_logps = batched_response_logps(pair.policy, groups, tok.pad_token_id, device, s.batch_size, shared)
    with pair.reference_view() as ref_module:
        ref_logps = batched_response_logps(ref_module, groups, tok.pad_token_id, device, s.batch_size, shared)
    P = len(prompt_ids)
    # Per-prompt means: the standard error is then over prompts (samples of one prompt correlate).
    kl, kl_se = reverse_kl_estimate(pol_logps.view(P, k).mean(1), ref_logps.view(P, k).mean(1))
    log_ratio = (pol_logps - ref_logps).tolist()

    pol_text = [tok.decode(r, skip_special_tokens=True) for r in pol.response_ids]
    ref_text = [tok.decode(r, skip_special_tokens=True) for r in ref.response_ids]
    prompts_rep = [ex.prompt for ex in examples for _ in range(k)]
    reward = None
    pol_scores = ref_scores = None
    if scorer is not None:
        with step_progress("reward model", 2, quiet) as advance:
            pol_scores = scorer.score(prompts_rep, pol_text, s.batch_size * k)
            advance(1)
            ref_scores = scorer.score(prompts_rep, ref_text, s.batch_size * k)
            advance(1)
        wr, wr_se, ties = win_rate(pol_scores, ref_scores)
        reward = {"policy": summary(pol_scores), "reference": summary(ref_scores),
                  "win_rate": wr, "win_rate_stderr": wr_se, "tie_share": ties}

    rows = []
    for i in range(min(s.table_rows, len(pol_text))):
        rows.append({"prompt": prompt_text(prompts_rep[i]), "policy": pol_text[i],
                     "reference": ref_text[i], "log_ratio": log_ratio[i],
                     "policy_reward": pol_scores[i] if pol_scores else None,
                     "reference_reward": ref_scores[i] if ref_scores else None})
    result = {
        **names, "reward_model": s.reward_model, "prompts": s.prompts, "num_prompts": P,
        "samples_per_prompt": k, "max_new_tokens": s.max_new_tokens, "temperature": s.temperature,
        "seed": s.seed,
        # Unbiased only if every sample is an exact draw from π: temperature 1 AND none cut.
        "kl": {"estimate": kl, "stderr": kl_se,
               "unbiased": samples_unbiased(s.temperature == 1.0, pol.clipped_ratio),
               "clipped_share": pol.clipped_ratio, "log_ratio": summary(log_ratio)},
        "lengths": {"policy": summary(list(map(len, pol.response_ids))),
                    "reference": summary(list(map(len, ref.response_ids)))},
        "clipped": {"policy": pol.clipped_ratio, "reference": ref.clipped_ratio},
        "reward": reward,
        "samples": rows,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(json_safe(result), indent=2) + "\n")
    write_report(result, out, log_ratio, pol, ref, pol_scores, ref_scores)
    return result


def write_report(r: dict, out: Path, log_ratio, pol: OnlineSamples, ref: OnlineSamples,
                 pol_scores, ref_scores) -> Path:
    """report.md with the headline numbers, plots and the sample table."""
    histogram(out / "lengths.png", {"policy": list(map(len, pol.response_ids)),
                                    "reference": list(map(len, ref.response_ids))},
              "response lengths (tokens)", "tokens")
    histogram(out / "log_ratio.png", {"policy samples": log_ratio},
              "log π(y|x) − log π_ref(y|x) on policy samples", "log-ratio (nats)",
              vlines={"KL estimate": r["kl"]["estimate"]})
    lines = [f"# hypo eval: {r['model']}", "",
             f"Reference: `{r['ref_model']}` · prompts: `{r['prompts']}` ({r['num_prompts']} × "
             f"{r['samples_per_prompt']} samples, max_new_tokens {r['max_new_tokens']}, temperature "
             f"{r['temperature']}, seed {r['seed']})", "", "## Summary", ""]
    kl = r["kl"]
    rows = [["reverse KL(π‖π_ref) (nats)", f"{fmt(kl['estimate'])} ± {fmt(kl['stderr'])}"],
            ["mean length (policy / reference)",
             f"{fmt(r['lengths']['policy']['mean'], 1)} / {fmt(r['lengths']['reference']['mean'], 1)}"],
            ["clipped share (policy / reference)",
             f"{fmt(r['clipped']['policy'])} / {fmt(r['clipped']['reference'])}"]]
    if r["reward"]:
        rw = r["reward"]
        rows += [["reward (policy / reference)",
                  f"{fmt(rw['policy']['mean'])} / {fmt(rw['reference']['mean'])}"],
                 ["win rate vs reference (ties ½)", f"{fmt(rw['win_rate'])} ± {fmt(rw['win_rate_stderr'])}"]]
        histogram(out / "rewards.png", {"policy": pol_scores, "reference": ref_scores},
                  "reward-model scores", "score")
    lines += [md_table(["metric", "value"], rows), ""]
    notes = []
    if r["temperature"] != 1.0:
        notes.append("temperature ≠ 1: samples are not from π, so the KL estimate is biased.")
    if r["clipped"]["policy"] > 0:
        notes.append(f"{fmt(r['clipped']['policy'] * 100, 1)}% of policy samples hit max_new_tokens; "
                     "cut samples bias the KL estimate (raise --max_new_tokens).")
    if not r["reward"]:
        notes.append("no --reward_model: reward scores and win rate were not computed.")
    lines += [f"- {n}" for n in notes] + ([""] if notes else [])
    lines += ["The standard error of the KL is over prompts (per-prompt means of the k samples).",
              "", "## Plots", "", "![lengths](lengths.png)", "", "![log-ratio](log_ratio.png)", ""]
    if r["reward"]:
        lines += ["![rewards](rewards.png)", ""]
    lines += ["## Samples", "", md_table(
        ["prompt", "policy", "reference", "log-ratio", "reward π", "reward π_ref"],
        [[x["prompt"][-80:], x["policy"][:120], x["reference"][:120], x["log_ratio"],
          x["policy_reward"], x["reference_reward"]] for x in r["samples"]]), ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path

