#!/usr/bin/env bash
# Create .venv/ in the repo root and install the project with its test tools. Idempotent: a second run with
# an unchanged pyproject.toml only checks the stamp.
#
# torch: without an NVIDIA GPU the CPU build torch==2.13.0+cpu is installed (from a local wheel folder or
# index when pip is configured with one, else from the PyTorch CPU index), so no CUDA wheel is ever pulled.
# With a GPU (nvidia-smi works) the default PyPI build torch==2.13.0 with its CUDA libraries is installed.
# Force either with DCELL_TORCH=cpu|cuda.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"

# `python -m platform.<cli>` from any directory: a .pth file makes every start of the venv's python run
# dcell_core/_platform_path.py, which gives the standard-library `platform` the repo's platform/ as its package
# path (docs/architecture.md). Written only once dcell_core is installed (it imports dcell_core), rewritten only
# when its content differs. Its name sorts after setuptools' __editable__*.pth, which makes dcell_core importable.
platform_pth() {
    local site line="import dcell_core._platform_path"
    site=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_path('purelib'))")
    if [ "$(cat "$site/dcell_platform.pth" 2>/dev/null)" != "$line" ]; then
        printf '%s\n' "$line" > "$site/dcell_platform.pth"
    fi
}

# The browser tests (tests/test_report.py, tests/test_mlflow_ui.py) drive the system's chromium: installed when it
# is missing and this runs as root with apt (Debian); otherwise those tests skip, saying how to install it.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } ||
        echo "warning: apt-get could not install chromium; the browser tests will skip" >&2
fi

# The model's C++ ops (dcell_core/nn/native.py) need a C++ compiler and ninja: installed when missing and this runs
# as root with apt (Debian); then built once per source and torch build (cached in ~/.cache/dcell/extensions, or
# $DCELL_EXTENSIONS_DIR), so that the first model a test or a Ray worker builds does not compile them.
native_ops() {
    if ! { command -v c++ && command -v ninja; } >/dev/null 2>&1 && [ "$(id -u)" = 0 ] &&
        command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ ninja-build >/dev/null
    fi
    "$VENV/bin/python" -c "from dcell_core.nn.native import ops; ops()"
}

stamp="$VENV/.dcell-installed"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    platform_pth
    native_ops
    exit 0
fi

mode=${DCELL_TORCH:-auto}
if [ "$mode" = auto ]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then mode=cuda; else mode=cpu; fi
fi
have=$("$VENV/bin/python" -c "import torch; print(torch.__version__)" 2>/dev/null || true)
if [ "$mode" = cpu ]; then
    if [ "$have" != "2.13.0+cpu" ]; then
        if ! $PIP install "torch==2.13.0+cpu"; then
            echo "torch 2.13.0+cpu not found in the configured indexes; trying the PyTorch CPU index" >&2
            $PIP install "torch==2.13.0+cpu" --index-url https://download.pytorch.org/whl/cpu \
                --extra-index-url https://pypi.org/simple
        fi
    fi
else
    if [ "$have" != "2.13.0" ]; then $PIP install "torch==2.13.0"; fi
fi
$PIP install -e ".[dev]"
"$VENV/bin/python" -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
platform_pth
native_ops
root=$PWD
(cd / && "$root/$VENV/bin/python" -m platform.doctor --help >/dev/null)  # the CLIs resolve outside the repo root
echo "$want" > "$stamp"
