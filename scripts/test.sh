#!/usr/bin/env bash
# Set up .venv (see setup.sh) and run the tests. Without arguments: the default tier, every test not marked
# slow (3 to 7 minutes on 2 cores). `bash scripts/test.sh -m slow`: the slow tier (real Ray searches, simulated
# clusters, promotion end to end; 13 to 30 minutes on 2 cores). CI runs both (.ci/run). Other arguments go to
# pytest as they are.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "$#" -eq 0 ]; then
    set -- -m "not slow"
fi
exec .venv/bin/python -m pytest "$@"
