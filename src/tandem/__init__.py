"""tandem: a large and a small language model reasoning as a pair.

The LLM streams insights, a sufficiency policy decides when they are enough (and the LLM is cut
off at once), and the SLM writes the full solution. Nothing heavy is imported here.
"""

from .cost import CostReport, ModelCost, Price
from .errors import (
    BackendError,
    BackendProtocolError,
    BackendTimeout,
    BackendUnavailable,
    ConfigError,
    InputError,
    ModelError,
    TandemError,
    UnsupportedError,
)
from .pipeline import DecodingSettings, PipelineConfig, Tandem
from .policy import BudgetPolicy, EffortSetting, StopRule
from .result import CheckpointRecord, TandemResult
from .types import (
    Backend,
    Capabilities,
    GenerationRequest,
    Message,
    ModelInfo,
    Prompt,
    ScoreResult,
    StopPolicy,
    TokenStep,
    TokenStream,
    Usage,
)

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "BackendError",
    "BackendProtocolError",
    "BackendTimeout",
    "BackendUnavailable",
    "BudgetPolicy",
    "Capabilities",
    "CheckpointRecord",
    "ConfigError",
    "CostReport",
    "DecodingSettings",
    "EffortSetting",
    "GenerationRequest",
    "InputError",
    "Message",
    "ModelCost",
    "ModelError",
    "ModelInfo",
    "PipelineConfig",
    "Price",
    "Prompt",
    "ScoreResult",
    "StopPolicy",
    "StopRule",
    "Tandem",
    "TandemError",
    "TandemResult",
    "TokenStep",
    "TokenStream",
    "UnsupportedError",
    "Usage",
    "__version__",
]
