"""`python -m hypo.demo.variance`: a miniature run writes its table and JSON."""

import json


def test_miniature_variance_run(tmp_path, monkeypatch, capsys):
    import hypo.demo.build as build
    from hypo.demo.variance import main

    monkeypatch.setattr(build, "SFT", {"examples": 256, "steps": 20, "batch_size": 32,
                                       "learning_rate": 3e-3})
    main(["--out", str(tmp_path), "--draws", "3", "--steps", "2", "--prompts", "4"])
    saved = json.loads((tmp_path / "variance.json").read_text())
    rows = saved["estimators"]
    assert set(rows) == {"seq", "token", "analytic"}
    assert rows["seq"]["variance_ratio"] == 1.0 and rows["seq"]["time_ratio"] == 1.0
    for row in rows.values():
        assert row["grad_variance"] > 0 and row["step_seconds"] > 0
    assert "| `analytic` |" in (tmp_path / "variance.md").read_text()
    assert "| `analytic` |" in capsys.readouterr().out
