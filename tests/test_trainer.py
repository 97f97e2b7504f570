"""End-to-end training on a locally built tiny model (CPU, float32)."""

import json

import pytest
import torch

from hypo.tracking import read_metrics
from hypo.trainer import Trainer


def first_last(metrics, key, n=3):
    rows = [m[key] for m in metrics if key in m]
    return sum(rows[:n]) / n, sum(rows[-n:]) / n


@pytest.mark.parametrize("algo", ["dpo", "hypo"])
def test_training_learns_and_keeps_reference_fixed(base_config, algo):
    cfg = base_config(algo=algo, max_steps=30, eval_split_size=0.2, eval_online_prompts=8,
                      kl_coef=0.05)
    trainer = Trainer(cfg)
    reference = trainer.pair.reference
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    initial = trainer.evaluate()
    assert initial["eval_kl/online"] == 0.0  # policy == reference before training
    trainer.train()
    metrics = read_metrics(cfg.output_dir)
    result = [m for m in metrics if "eval_loss" in m][-1]  # the final evaluation
    train_rows = [m for m in metrics if "loss" in m]
    assert len(train_rows) == 30
    m0, m1 = first_last(train_rows, "rewards/margins")
    a0, a1 = first_last(train_rows, "rewards/accuracies")
    assert m1 > m0 + 0.05, (m0, m1)
    assert a1 > a0 and a1 >= 0.8, (a0, a1)
    # Held-out pairs: the learned preference generalises (margin up from exactly 0).
    assert initial["eval_rewards/margins"] == 0.0
    assert result["eval_rewards/margins"] > 0.02, result
    # The reference never changes.
    for name, value in reference.state_dict().items():
        assert torch.equal(value, before[name]), name
    if algo == "hypo":
        # At step 0 the policy is the reference: the KL estimate is exactly 0.
        assert train_rows[0]["kl/online"] == 0.0
        assert train_rows[0]["loss/kl"] == 0.0
        assert 0 <= train_rows[0]["online/clipped_ratio"] <= 1
        assert train_rows[0]["online/length"] > 0
    assert "eval_kl/online" in result and "eval_kl/online_stderr" in result


def test_saved_model_reloads_and_generates(base_config, tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = base_config(algo="hypo", max_steps=2)
    Trainer(cfg).train()
    model = AutoModelForCausalLM.from_pretrained(cfg.output_dir)
    tok = AutoTokenizer.from_pretrained(cfg.output_dir)
    ids = tok("Say red blue:", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > ids["input_ids"].shape[1]
    saved = json.loads((__import__("pathlib").Path(cfg.output_dir) / "hypo_config.json").read_text())
    assert saved["algo"] == "hypo" and saved["max_steps"] == 2
    # TensorBoard is off in this config; metrics.jsonl is always written.
    assert read_metrics(cfg.output_dir)


def test_kl_coef_zero_matches_dpo(base_config):
    """HyPO with λ = 0 trains exactly like DPO (the samples only add logging)."""
    runs = {}
    for algo in ("dpo", "hypo"):
        cfg = base_config(algo=algo, kl_coef=0.0, max_steps=4,
                          output_dir=base_config().output_dir + algo)
        trainer = Trainer(cfg)
        trainer.train()
        runs[algo] = ({n: p.detach().clone() for n, p in trainer.model.named_parameters()},
                      read_metrics(cfg.output_dir))
    for name, p in runs["dpo"][0].items():
        assert torch.allclose(p, runs["hypo"][0][name], atol=1e-5, rtol=0), name
    for a, b in zip(runs["dpo"][1], runs["hypo"][1]):
        for key in ("loss", "rewards/margins", "logps/chosen", "logps/rejected"):
            assert abs(a[key] - b[key]) < 1e-5, key


def test_reference_cache_is_reused_and_invalidated(base_config):
    cfg = base_config(algo="dpo", max_steps=1)
    first = Trainer(cfg)
    assert first.data.report["ref_cache_train"] == "computed"
    second = Trainer(cfg)
    assert second.data.report["ref_cache_train"] == "reused"
    assert torch.equal(first.ref_train, second.ref_train)
    # Lengths that truncate change the token ids, hence the fingerprint: recomputed.
    shorter = Trainer(base_config(algo="dpo", max_steps=1, max_prompt_length=4))
    assert shorter.data.report["train_tokenize"]["truncated_prompts"] > 0
    assert shorter.data.report["ref_cache_train"] == "computed"
    # Lengths that cut nothing give the same token ids: the cache stays valid and is reused.
    roomy = Trainer(base_config(algo="dpo", max_steps=1, max_length=40))
    assert roomy.data.report["ref_cache_train"] == "reused"


def test_lora_reference_is_adapter_disabled(base_config):
    cfg = base_config(algo="hypo", use_peft=True, lora_r=4, max_steps=3, learning_rate=1e-2,
                      merge_adapter=True)
    trainer = Trainer(cfg)
    assert trainer.pair.reference is None and trainer.pair.is_peft
    base = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" not in n}
    trainer.train()
    for n, p in trainer.model.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, base[n]), n
    rows = read_metrics(cfg.output_dir)
    assert rows[0]["kl/online"] == 0.0 and rows[-1]["kl/online"] != 0.0
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    assert (Path(cfg.output_dir) / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(Path(cfg.output_dir) / "merged")
    assert sum(p.numel() for p in merged.parameters()) > 0


def test_separate_prompt_dataset_feeds_online_samples(base_config, tmp_path):
    import json as _json

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(_json.dumps({"prompt": f"Say {w} {w}:"}) + "\n"
                               for w in ("red", "blue", "cat", "dog", "sun")))
    cfg = base_config(algo="hypo", max_steps=2, prompt_dataset_name=str(prompts),
                      online_prompts_per_step=3, num_online_samples=2, log_online_samples=True)
    trainer = Trainer(cfg)
    assert len(trainer.data.prompts) == 5
    trainer.train()
    logged = [_json.loads(x) for x in (tmp_path / "out" / "online_samples.jsonl").read_text().splitlines()]
    assert [len(x["response_ids"]) for x in logged] == [6, 6]  # 3 prompts × k=2 per step


def test_bfloat16_and_cosine_warmup_run(base_config):
    cfg = base_config(algo="hypo", max_steps=4, dtype="bfloat16", lr_scheduler_type="cosine",
                      warmup_steps=2)
    trainer = Trainer(cfg)
    assert next(trainer.model.parameters()).dtype == torch.bfloat16
    trainer.train()
    rows = read_metrics(cfg.output_dir)
    lrs = [r["learning_rate"] for r in rows if "learning_rate" in r]
    assert lrs[0] < lrs[1] < lrs[2] and lrs[3] < lrs[2]  # warm-up to the peak, then cosine decay
    assert lrs[2] == cfg.learning_rate
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows if "loss" in r)


def test_trainer_callbacks_and_token_counts(base_config):
    """The core loop speaks transformers' TrainerCallback protocol (on_log gets the step's metrics)."""
    from transformers import TrainerCallback

    seen = []

    class Tokens(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if "tokens/pairs" in logs:
                seen.append((state.global_step, logs["tokens/pairs"], logs["tokens/online"]))

    cfg = base_config(algo="hypo", max_steps=3)
    trainer = Trainer(cfg, callbacks=[Tokens()])
    trainer.train()
    assert [s for s, _, _ in seen] == [1, 2, 3]
    data = trainer.data.train
    first = trainer.pairs_stream.take(0, cfg.per_device_train_batch_size)
    expected = sum(2 * len(data[i].prompt_ids) + len(data[i].chosen_ids) + len(data[i].rejected_ids)
                   for i in first)
    assert seen[0][1] == expected
    assert seen[0][2] > cfg.per_device_train_batch_size * cfg.num_online_samples  # prompts + samples


def test_conversational_data_trains_with_the_chat_template(base_config, tmp_path):
    from hypo.tiny import synthetic_preferences, write_jsonl

    data = write_jsonl(synthetic_preferences(32, seed=1, conversational=True), tmp_path / "chat.jsonl")
    cfg = base_config(algo="hypo", dataset_name=str(data), max_steps=2, log_online_samples=True)
    trainer = Trainer(cfg)
    tok = trainer.data.tokenizer
    pair = trainer.data.train[0]
    # The prompt ends with the template's generation prompt; the response ends with eos.
    assert tok.decode(pair.prompt_ids).endswith("<|assistant|>")
    assert pair.chosen_ids[-1] == tok.eos_token_id
    trainer.train()
    assert read_metrics(cfg.output_dir)[-1]["kl/online"] is not None


def test_dpo_without_eval_holds_no_reference_copy(base_config):
    trainer = Trainer(base_config(algo="dpo", eval_online_prompts=32, eval_split_size=0.0))
    assert trainer.pair.reference is None  # the cached log-probs are all DPO needs
    with_eval = Trainer(base_config(algo="dpo", eval_online_prompts=4, eval_split_size=0.2))
    assert with_eval.pair.reference is not None  # eval_kl/online needs π_ref live


def test_logs_flag_clipped_online_samples_as_biased(base_config):
    """online/unbiased is 0 when any sample was cut at max_new_tokens, with the share beside it."""
    from pathlib import Path

    cfg = base_config(max_steps=1, per_device_train_batch_size=4, max_new_tokens=2)
    Trainer(cfg).train()
    metrics = json.loads(Path(cfg.output_dir, "metrics.jsonl").read_text().splitlines()[0])
    assert metrics["online/clipped_ratio"] > 0 and metrics["online/unbiased"] == 0.0


def test_no_pair_left_after_truncation_says_how_to_fix_it(base_config):
    """keep_start drops a pair whose prompt fills max_length: when that drops every pair, the error
    names the data and the three ways out."""
    from hypo.data import DataError
    from hypo.trainer import Trainer

    with pytest.raises(DataError, match="no usable preference pair.*raise max_length.*keep_end"):
        Trainer(base_config(truncation_mode="keep_start", max_length=3, max_prompt_length=None))
