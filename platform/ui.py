"""`python -m platform.ui [--port 5000] [--project-dir DIR]`: the MLflow UI for the embedded store, on 127.0.0.1.

Runs `mlflow ui --backend-store-uri sqlite:///<project>/mlflow.db --default-artifact-root <project>/mlartifacts
--host 127.0.0.1 --port PORT` and prints that command first.
"""
import argparse
import os
import shlex
import sys
from pathlib import Path

from dcell_core.cli import fail_usage


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m platform.ui", description=__doc__)
    ap.add_argument("--port", type=int, default=5000)
    ap.add_argument("--project-dir", type=Path, default=Path.cwd())
    args = ap.parse_args(argv)
    project = args.project_dir.resolve()
    db = project / "mlflow.db"
    if not db.exists():
        fail_usage(f"no MLflow store at {db}: run a search first (python -m platform.search ...)")
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", f"sqlite:///{db}",
           "--default-artifact-root", str(project / "mlartifacts"), "--host", "127.0.0.1", "--port", str(args.port)]
    print(" ".join(shlex.quote(c) for c in cmd), flush=True)
    os.execv(sys.executable, cmd)


if __name__ == "__main__":
    sys.exit(main())
