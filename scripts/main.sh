#!/usr/bin/env bash
# Run hypo's main job on its built-in default (sets up .venv on first use).
# Extra arguments go to the hypo command, e.g. `bash scripts/main.sh --quick`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/hypo" demo "$@"
