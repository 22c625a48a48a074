#!/usr/bin/env bash
# `daemon/benches/anchors/run.sh [score_anchors.py flags]`: builds the
# release binary, puts NannyML and Evidently in a virtual environment under
# ~/.cache/modelwatch (once), and times `modelwatch score` against them on the
# same generated frames. `--skip-python` times modelwatch alone.
set -euo pipefail
cd "$(dirname "$0")/../../.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/modelwatch/target}
venv=${MODELWATCH_ANCHORS_VENV:-$HOME/.cache/modelwatch/anchors-venv}
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    # Evidently 0.7 imports pandas internals that pandas 3 removed.
    "$venv/bin/pip" install --quiet numpy "pandas<3" nannyml evidently
fi
cargo build --release --quiet --bin modelwatch
# NannyML reports usage to a server these machines cannot reach.
export NML_DISABLE_USAGE_LOGGING=1
exec "$venv/bin/python" daemon/benches/anchors/score_anchors.py \
    --modelwatch "$CARGO_TARGET_DIR/release/modelwatch" "$@"
