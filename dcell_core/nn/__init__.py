"""DCell visible neural networks: config, per-term oracle, stratum-parallel model, loss and health metrics."""
from dcell_core.nn.build import build_dcell
from dcell_core.nn.common import DCellOutput, TermSizes, term_sizes
from dcell_core.nn.config import LossConfig, ModelConfig
from dcell_core.nn.convert import from_oracle, load_oracle_state_dict, oracle_gradients, oracle_state_dict, to_oracle
from dcell_core.nn.health import prediction_health
from dcell_core.nn.losses import dcell_loss
from dcell_core.nn.oracle import OracleDCell
from dcell_core.nn.stratum_dcell import StratumDCell

__all__ = [
    "DCellOutput", "LossConfig", "ModelConfig", "OracleDCell", "StratumDCell", "TermSizes", "build_dcell",
    "dcell_loss", "from_oracle", "load_oracle_state_dict", "oracle_gradients", "oracle_state_dict",
    "prediction_health", "term_sizes", "to_oracle",
]
