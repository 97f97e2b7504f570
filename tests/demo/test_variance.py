"""`python -m hypo.demo.variance`: a miniature run writes its table and JSON."""

import json


def test_miniature_variance_run(tmp_path, monkeypatch, capsys):
    import hypo.demo.build as build
    from hypo.demo.variance import main

    monkeypatch.setattr(build, "SFT", {"examples": 256, "steps": 20, "batch_size": 32,
                                       "learning_rate": 3e-3})
    main(["--out", str(tmp_path), "--draws", "3", "--steps", "2", "--prompts", "4", "--k", "2", "3"])
    saved = json.loads((tmp_path / "variance.json").read_text())
    rows = {(r["k"], r["estimator"]): r for r in saved["estimators"]}
    assert set(rows) == {(k, e) for k in (2, 3) for e in ("seq", "reinforce", "token", "analytic")}
    for k in (2, 3):
        assert rows[(k, "seq")]["variance_ratio"] == 1.0 and rows[(k, "seq")]["time_ratio"] == 1.0
    assert rows[(2, "seq")]["variance_x_time_vs_default"] == 1.0
    for row in rows.values():
        assert row["grad_variance"] > 0 and row["step_seconds"] > 0
    # the no-baseline arm is a different estimator: its gradients differ from seq's
    assert rows[(2, "reinforce")]["grad_variance"] != rows[(2, "seq")]["grad_variance"]
    assert "| 3 | `reinforce` |" in (tmp_path / "variance.md").read_text()
    assert "| 2 | `analytic` |" in capsys.readouterr().out
