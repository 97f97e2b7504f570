"""`python -m hypo.demo.variance`: a miniature run writes its table and JSON."""

import json


def test_miniature_variance_run(tmp_path, monkeypatch, capsys):
    import torch

    import hypo.demo.build as build
    from hypo.demo.variance import ARMS, main
    from hypo.trainer import Trainer

    monkeypatch.setattr(build, "SFT", {"examples": 256, "steps": 20, "batch_size": 32,
                                       "learning_rate": 3e-3})
    # Pair the arms: every micro-step of one draw (one call per arm) samples with the same sampler
    # generator state, so the arms see identical online samples; record each call's gradient.
    # (Only the measured calls, those with online prompts: the DPO checkpoint's training has none.)
    micro_step, calls = Trainer._micro_step, []

    def paired_micro_step(self, indices, prompts, *a, **kw):
        if prompts is None:
            return micro_step(self, indices, prompts, *a, **kw)
        if len(calls) % len(ARMS) == 0:
            paired_micro_step.state = self.sampler.generator.get_state()
        else:
            self.sampler.generator.set_state(paired_micro_step.state)
        out = micro_step(self, indices, prompts, *a, **kw)
        grad = torch.cat([p.grad.flatten() for p in self.model.parameters() if p.requires_grad])
        calls.append((self.cfg.kl_estimator, grad.clone()))
        return out

    monkeypatch.setattr(Trainer, "_micro_step", paired_micro_step)
    main(["--out", str(tmp_path), "--draws", "4", "--groups", "2", "--steps", "2", "--prompts", "4", "--k", "2", "3"])
    saved = json.loads((tmp_path / "variance.json").read_text())
    rows = {(r["k"], r["estimator"]): r for r in saved["estimators"]}
    assert set(rows) == {(k, e) for k in (2, 3) for e in ("seq", "reinforce", "token", "analytic")}
    for k in (2, 3):
        assert rows[(k, "seq")]["variance_ratio"] == 1.0 and rows[(k, "seq")]["time_ratio"] == 1.0
    assert rows[(2, "seq")]["variance_x_time_vs_default"] == 1.0
    for row in rows.values():
        assert row["grad_variance"] > 0 and row["step_seconds"] > 0
        assert len(row["group_variances"]) == 2 and min(row["group_variances"]) > 0
        g = row["variance_ratio_groups"]
        assert g["min"] <= g["median"] <= g["max"]
    assert rows[(2, "seq")]["variance_ratio_groups"] == {"median": 1.0, "min": 1.0, "max": 1.0}
    # the no-baseline arm is a different estimator: its gradients differ from seq's
    assert rows[(2, "reinforce")]["grad_variance"] != rows[(2, "seq")]["grad_variance"]
    # ... on the same samples: in each draw, the two arms run with kl_estimator "seq" (seq and
    # reinforce, whichever order) get identical samples, so a no-op swap would give them the same
    # gradient; the dropped baseline changes it well beyond rounding
    assert len(calls) == 2 * 4 * len(ARMS)
    for draw in range(0, len(calls), len(ARMS)):
        a, b = [g for estimator, g in calls[draw: draw + len(ARMS)] if estimator == "seq"]
        assert (a - b).norm() > 1e-2 * b.norm(), draw
    assert "| 3 | `reinforce` |" in (tmp_path / "variance.md").read_text()
    assert "| 2 | `analytic` |" in capsys.readouterr().out


def test_covariance_traces_per_group_match_torch_cov():
    import torch

    from hypo.demo.variance import covariance_traces

    x = torch.randn(7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    groups = [x[:3], x[3:]]
    got = covariance_traces(torch.stack([g.sum(0) for g in groups]), torch.stack([g.pow(2).sum() for g in groups]),
                            torch.tensor([3.0, 4.0], dtype=torch.float64))
    want = torch.stack([torch.cov(g.T).trace() for g in groups])
    # float64 sums of ≤ 7 terms of size ~1, two formulas: agreement to ~1e-15 relative
    assert torch.allclose(got, want, rtol=1e-12, atol=0)
