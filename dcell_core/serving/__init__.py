"""Production models: promotion of a search's winner, the production checkpoint format, and prediction.

- `load_checkpoint(path)`: rebuild a trained DCell from a production checkpoint (checkpoint.py)
- `promote(PromoteRequest(...))`: best trial -> MLflow registry version + alias + checkpoint directory
- `inference`: genotypes by gene name -> predictions and the subsystems that change most
"""
from dcell_core.serving.checkpoint import (CheckpointError, DCellCheckpoint, FingerprintMismatch, load_checkpoint,
                                          write_checkpoint)
from dcell_core.serving.inference import Subsystem, UnknownGenesError, subsystem_changes, top_subsystems

__all__ = [
    "CheckpointError", "DCellCheckpoint", "FingerprintMismatch", "Subsystem", "UnknownGenesError", "load_checkpoint",
    "subsystem_changes", "top_subsystems", "write_checkpoint",
]
