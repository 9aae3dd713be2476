"""genkit: a pluggable toolkit for autoencoders and VAEs.

A model is a composition of an ``Encoder``, a ``Decoder``, a ``Prior`` and a ``Loss``;
models, priors, losses and noise transforms are plugins found through Python entry points.
"""

from genkit.config import ModelConfig, option
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
from genkit.losses import ELBOLoss, ReconstructionLoss, reconstruction_nll
from genkit.model import Model
from genkit.noise import NoiseTransform, normal_like, seeded_generator, uniform_like
from genkit.parts import Decoder, Encoder, Loss, LossOutput, ModelOutput, Posterior, Prior
from genkit.priors import StandardNormal
from genkit.registry import FailedPlugin, get_model, get_model_class, get_noise, get_prior, list_models

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "Decoder",
    "ELBOLoss",
    "Encoder",
    "FailedPlugin",
    "GenkitError",
    "Loss",
    "LossOutput",
    "Model",
    "ModelConfig",
    "ModelOutput",
    "NoiseTransform",
    "PluginError",
    "Posterior",
    "Prior",
    "ReconstructionLoss",
    "RunExistsError",
    "ShapeError",
    "StandardNormal",
    "TrainingError",
    "get_model",
    "get_model_class",
    "get_noise",
    "get_prior",
    "list_models",
    "normal_like",
    "option",
    "reconstruction_nll",
    "seeded_generator",
    "uniform_like",
]
