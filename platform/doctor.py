"""`python -m platform.doctor [--json]`: the environment the platform runs in.

Imports the heavy stack (torch, ray, mlflow, optuna, hydra, torch-geometric) through this repo's `platform`
package and prints their versions, the device torch would use and the embedded data's provenance.
"""
from __future__ import annotations

import argparse
import json
import sys


def collect() -> dict:
    import hydra
    import mlflow
    import optuna
    import ray
    import torch
    import torch_geometric

    import platform as plat

    return {
        "python": sys.version.split()[0],
        "os": f"{plat.system()} {plat.release()} {plat.machine()}",
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "threads": torch.get_num_threads(),
        "torch_geometric": torch_geometric.__version__,
        "ray": ray.__version__,
        "mlflow": mlflow.__version__,
        "optuna": optuna.__version__,
        "hydra": hydra.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m platform.doctor", description=__doc__)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    info = collect()
    if args.json:
        print(json.dumps(info))
    else:
        for k, v in info.items():
            print(f"{k:16} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
