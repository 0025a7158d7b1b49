"""Lightning callbacks of cosmos_lit (importable as ``cosmos_lit.callbacks``)."""

from cosmos_lit.callbacks.run_config import RunConfigInCheckpoint
from cosmos_lit.callbacks.sim_eval import SimEvalCallback

__all__ = ["RunConfigInCheckpoint", "SimEvalCallback"]
