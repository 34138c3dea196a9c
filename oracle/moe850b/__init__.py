"""Oracle850B-MoE: configuration, router, experts, MoE layer, model, parameter counts and weights I/O."""

from oracle.moe850b.config import ConfigError, MoEConfig, load_config
from oracle.moe850b.model import ModelOutput, OracleMoE

__all__ = ["ConfigError", "MoEConfig", "ModelOutput", "OracleMoE", "load_config"]
