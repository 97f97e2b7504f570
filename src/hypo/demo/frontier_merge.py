"""`hypo demo --frontier --merge A B …`: one frontier from runs made on disjoint seeds.

A frontier run is per seed: seed s fixes its data sets, batch order and reward models, and every
method at that seed sees them; π_ref and the evaluation's uniforms are the same in every process.
So the runs of `--seeds 0 1 2 3 4` and of `--seeds 5 6 7 8 9` together are a 10-seed frontier,
paired by seed like one run of 10 seeds. (Not bit-identical to it: the online samples of a
process come from one generator seeded by the sum of its seeds, so they are other draws of the
same distributions.) Merging refuses parts whose settings, π_ref or seeds make them not so.
"""

from __future__ import annotations

import json
from pathlib import Path

RUNS_FILE = "frontier-runs.json"


def load_runs(folder: str | Path) -> dict:
    path = Path(folder) / RUNS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; --merge takes output folders of `hypo demo --frontier` "
                                f"(each holds {RUNS_FILE}).")
    try:
        part = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); rerun that part of the frontier.") from err
    missing = [k for k in ("settings", "reference", "coverage", "runs", "timing") if k not in part]
    if missing:
        raise ValueError(f"{path}: no {', '.join(missing)}: not the runs file of `hypo demo --frontier` "
                         "(`hypo realexp --frontier` writes another kind).")
    return part


def merge_results(parts: list[dict], names: list[str] | None = None) -> dict:
    """The results of several frontier runs on disjoint seeds, as one run's results."""
    names = names or [f"part {i}" for i in range(len(parts))]
    if len(parts) < 2:
        raise ValueError("--merge needs at least two frontier output folders.")
    first, name0 = parts[0], names[0]
    for part, name in zip(parts[1:], names[1:]):
        for key in sorted(set(first["settings"]) | set(part["settings"])):
            if key not in ("seeds", "merged_from") and first["settings"].get(key) != part["settings"].get(key):
                raise ValueError(f"{name}: setting {key!r} is {part['settings'].get(key)!r}, {name0} has "
                                 f"{first['settings'].get(key)!r}; only runs with the same settings merge.")
        # π_ref's own evaluation (same π_ref, same uniforms) must agree exactly
        if part["reference"] != first["reference"] or part["coverage"] != first["coverage"]:
            raise ValueError(f"{name}: π_ref's evaluation differs from {name0}'s (another π_ref or task); "
                             "rerun both parts with the same hypo version on one machine.")
    seeds = [s for part in parts for s in part["settings"]["seeds"]]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--merge: seeds {seeds} repeat across {names}; each part must have its own seeds.")
    timing: dict[str, float] = {}
    for part in parts:
        for key, value in part["timing"].items():
            timing[key] = round(timing.get(key, 0.0) + value, 1)
    return {**first,
            "settings": {**first["settings"], "seeds": seeds,
                         "merged_from": [list(p["settings"]["seeds"]) for p in parts]},
            "reward_models": {k: v for p in parts for k, v in p.get("reward_models", {}).items()},
            "runs": [r for p in parts for r in p["runs"]], "timing": timing}
