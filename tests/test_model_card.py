"""A README.md model card next to every saved model (final and merged)."""

from pathlib import Path

from hypo.config import TrainConfig
from hypo.model_card import CITATION, final_metrics, write_model_card
from hypo.trainer import Trainer


def test_training_writes_a_card_next_to_each_saved_model(base_config):
    cfg = base_config(algo="hypo", use_peft=True, lora_r=4, merge_adapter=True, max_steps=2,
                      eval_split_size=0.2, learning_rate=1e-3, kl_coef=0.07)
    Trainer(cfg).train()
    out = Path(cfg.output_dir)
    for folder in (out, out / "merged"):
        card = (folder / "README.md").read_text()
        assert "base_model:" not in card  # a local folder is not a hub reference
        assert "(a local folder, not a hub model)" in card
        assert "evaluation pairs: a random 0.2 share of" in card  # the eval data is named
        assert cfg.dataset_name in card and "training pairs" in card
        assert "HyPO" in card and "0.07" in card  # algorithm and λ
        assert "| beta | 0.1 |" in card and "| learning_rate | 0.001 |" in card
        assert "| loss |" in card and "| eval_loss |" in card and "| kl/online |" in card
        assert "2406.01462" in card and "Song, Yuda" in card
    assert "library_name: peft" in (out / "README.md").read_text()
    assert "AutoPeftModelForCausalLM" in (out / "README.md").read_text()
    assert "library_name: transformers" in (out / "merged" / "README.md").read_text()
    metrics = final_metrics(out)
    assert metrics["step"] == 2 and "loss" in metrics and "eval_rewards/margins" in metrics


def test_card_for_dpo_without_metrics(tmp_path):
    cfg = TrainConfig(model_name_or_path="EleutherAI/pythia-1.4b-deduped",
                      dataset_name="trl-lib/tldr-preference", algo="dpo", beta=0.05)
    path = write_model_card(tmp_path / "m", cfg, {}, {"train_pairs": 10})
    card = path.read_text()
    assert card.startswith("---\nbase_model: EleutherAI/pythia-1.4b-deduped\n")
    assert "datasets:\n- trl-lib/tldr-preference" in card  # a hub dataset goes into the metadata
    assert "**DPO**" in card and "No metrics were logged." in card and "- training pairs: 10" in card
    assert CITATION in card
    assert final_metrics(tmp_path / "nothing") == {}


def test_card_says_whether_online_samples_were_unbiased(tmp_path):
    cfg = TrainConfig(model_name_or_path="m", dataset_name="d.jsonl", algo="hypo")
    card = write_model_card(tmp_path / "a", cfg, {"online/clipped_ratio": 0.25}, {}).read_text()
    assert "Online samples unbiased: no (clipped share 0.25" in card and "max_new_tokens" in card
    card = write_model_card(tmp_path / "b", cfg, {"online/clipped_ratio": 0.0}, {}).read_text()
    assert "Online samples unbiased: yes (clipped share 0)." in card
    cfg.temperature = 0.7
    card = write_model_card(tmp_path / "c", cfg, {"online/clipped_ratio": 0.0}, {}).read_text()
    assert "Online samples unbiased: no" in card and "temperature" in card


def test_card_without_evaluation_mentions_none_and_names_eval_data(base_config, tmp_path):
    """No eval ran: the card says so and shows no eval metrics; a separate eval file is named."""
    cfg = base_config(algo="dpo", max_steps=2, eval_split_size=0.0)
    Trainer(cfg).train()
    card = (Path(cfg.output_dir) / "README.md").read_text()
    assert "no evaluation ran" in card and "last evaluation" not in card
    assert "| eval_" not in card and "- evaluation: none" in card
    cfg2 = TrainConfig(model_name_or_path="org/sft", dataset_name="trl-lib/x",
                       eval_dataset_name="trl-lib/x-test")
    card2 = write_model_card(tmp_path / "c", cfg2, {"step": 3, "loss": 0.5, "eval_loss": 0.6},
                             {"eval_pairs": 5}).read_text()
    assert "base_model: org/sft" in card2  # a hub id stays in the metadata
    assert "evaluation pairs from `trl-lib/x-test`" in card2 and "last evaluation" in card2
