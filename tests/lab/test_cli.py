"""`hypo lab` command line: writes JSON and figures."""

import json

from hypo.lab.cli import main


def test_cli_all_writes_json_and_figures(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--quick"]) == 0
    data = json.loads((tmp_path / "lab.json").read_text())
    assert set(data) == {"separation", "sweep", "finite", "extrapolation", "ood-mass"}
    for png in ("separation_global", "separation_counterexample", "separation_trajectories",
                "separation_more", "sweep", "finite_samples", "extrapolation", "ood_mass"):
        assert (tmp_path / f"{png}.png").stat().st_size > 10_000
    assert "[separation]" in capsys.readouterr().out


def test_cli_subcommand_writes_its_json(tmp_path):
    assert main(["extrapolation", "--out", str(tmp_path), "--steps", "50"]) == 0
    assert json.loads((tmp_path / "extrapolation.json").read_text())["config"]["steps"] == 50
