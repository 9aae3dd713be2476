"""genkit: a pluggable toolkit for autoencoders and VAEs.

A model is a composition of an ``Encoder``, a ``Decoder``, a ``Prior`` and a ``Loss``; each part kind, whole
models (presets or ``Model`` subclasses) and noise transforms are plugins found through Python entry points.
"""

from genkit.config import Config, ModelConfig, option
from genkit.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    GenkitError,
    PluginError,
    RunExistsError,
    ShapeError,
    TrainingError,
)
from genkit.losses import ELBOLoss, LikelihoodConfig, ReconstructionLoss, reconstruction_nll
from genkit.model import Model, Preset
from genkit.noise import NoiseTransform, normal_like, seeded_generator, uniform_like
from genkit.parts import (
    Batch,
    Decoder,
    Encoder,
    Loss,
    LossOutput,
    ModelOutput,
    Posterior,
    Prior,
    require_density,
    require_trained_prior,
)
from genkit.priors import StandardNormal
from genkit.registry import (
    FailedPlugin,
    get_decoder,
    get_encoder,
    get_loss,
    get_model,
    get_model_class,
    get_noise,
    get_prior,
    list_models,
)

__version__ = "0.2.0"

__all__ = [
    "Batch",
    "CheckpointError",
    "Config",
    "ConfigError",
    "DataError",
    "Decoder",
    "ELBOLoss",
    "Encoder",
    "FailedPlugin",
    "GenkitError",
    "LikelihoodConfig",
    "Loss",
    "LossOutput",
    "Model",
    "ModelConfig",
    "ModelOutput",
    "NoiseTransform",
    "PluginError",
    "Posterior",
    "Preset",
    "Prior",
    "ReconstructionLoss",
    "RunExistsError",
    "ShapeError",
    "StandardNormal",
    "TrainingError",
    "get_decoder",
    "get_encoder",
    "get_loss",
    "get_model",
    "get_model_class",
    "get_noise",
    "get_prior",
    "list_models",
    "normal_like",
    "option",
    "reconstruction_nll",
    "require_density",
    "require_trained_prior",
    "seeded_generator",
    "uniform_like",
]
