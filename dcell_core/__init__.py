"""DCell visible neural networks: ontology pipeline, genotype data, stratum-parallel model, training, search.

`dcell_core.load_checkpoint(path)` rebuilds a promoted production model (see dcell_core.serving); it is
imported on first use, so `import dcell_core` stays cheap (no torch, no MLflow).
"""
from typing import Any

__all__ = ["load_checkpoint"]


def __getattr__(name: str) -> Any:
    if name == "load_checkpoint":
        from dcell_core.serving.checkpoint import load_checkpoint

        return load_checkpoint
    raise AttributeError(f"module 'dcell_core' has no attribute {name!r}")
