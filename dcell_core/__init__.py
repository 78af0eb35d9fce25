"""DCell visible neural networks: ontology pipeline, genotype data, stratum-parallel model, training, search.

`dcell_core.load_checkpoint(path)` rebuilds a promoted production model (see dcell_core.serving); it is
imported on first use, so `import dcell_core` stays cheap (no torch, no MLflow).
"""
import os
from typing import Any

# PyTorch maps every large CPU tensor afresh and page-faults it in on each op; on the 2-core VMs this project
# runs on, that costs more than a whole-yeast step's arithmetic in places. With THP_MEM_ALLOC_ENABLE=1 PyTorch
# asks for transparent huge pages for them (read once, at its first allocation: so it is set here, before any
# part of the platform imports torch; docs/performance.md, "The training loop's step"). An explicit value in the
# environment wins (0 turns it off).
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__all__ = ["load_checkpoint"]


def __getattr__(name: str) -> Any:
    if name == "load_checkpoint":
        from dcell_core.serving.checkpoint import load_checkpoint

        return load_checkpoint
    raise AttributeError(f"module 'dcell_core' has no attribute {name!r}")
