"""genkit: a pluggable toolkit for autoencoders and VAEs.

A model is a composition of an ``Encoder``, a ``Decoder``, a ``Prior`` and a ``Loss``; each part kind, whole
models (presets or ``Model`` subclasses) and noise transforms are plugins found through Python entry points.
``Trainer`` trains any model on ``ImageData``; ``start_run`` does what ``genkit run`` does and writes a run folder
that ``load_model`` reads back.
"""

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

#: public name -> the module that defines it; imported on first use, so that ``genkit --help`` and
#: ``import genkit`` do not pay for torch until something needs it
_EXPORTS = {
    "Batch": "genkit.parts",
    "Callback": "genkit.train",
    "CheckpointError": "genkit.errors",
    "Config": "genkit.config",
    "ConfigError": "genkit.errors",
    "DataConfig": "genkit.config",
    "DataError": "genkit.errors",
    "Decoder": "genkit.parts",
    "ELBOLoss": "genkit.losses",
    "Encoder": "genkit.parts",
    "FailedPlugin": "genkit.registry",
    "GenkitError": "genkit.errors",
    "ImageData": "genkit.data",
    "LikelihoodConfig": "genkit.losses",
    "LoggingConfig": "genkit.config",
    "Loss": "genkit.parts",
    "LossOutput": "genkit.parts",
    "Model": "genkit.model",
    "ModelConfig": "genkit.config",
    "ModelOutput": "genkit.parts",
    "NoiseTransform": "genkit.noise",
    "PluginError": "genkit.errors",
    "Posterior": "genkit.parts",
    "Preset": "genkit.model",
    "Prior": "genkit.parts",
    "ReconstructionLoss": "genkit.losses",
    "RunExistsError": "genkit.errors",
    "ShapeError": "genkit.errors",
    "StandardNormal": "genkit.priors",
    "TrainConfig": "genkit.train",
    "Trainer": "genkit.train",
    "TrainingError": "genkit.errors",
    "estimate_nll": "genkit.evaluate",
    "evaluate_run": "genkit.evaluate",
    "fit_prior": "genkit.priors",
    "get_decoder": "genkit.registry",
    "get_encoder": "genkit.registry",
    "get_loss": "genkit.registry",
    "get_model": "genkit.registry",
    "get_model_class": "genkit.registry",
    "get_noise": "genkit.registry",
    "get_prior": "genkit.registry",
    "list_models": "genkit.registry",
    "load_model": "genkit.checkpoint",
    "normal_like": "genkit.noise",
    "option": "genkit.config",
    "reconstruction_nll": "genkit.losses",
    "require_density": "genkit.parts",
    "require_trained_prior": "genkit.parts",
    "resume_run": "genkit.run",
    "save_run": "genkit.checkpoint",
    "seeded_generator": "genkit.noise",
    "start_run": "genkit.run",
    "uniform_like": "genkit.noise",
}

if TYPE_CHECKING:  # the same names, for type checkers, IDEs and the API docs (griffe reads this statically)
    from genkit.checkpoint import load_model, save_run
    from genkit.config import Config, DataConfig, LoggingConfig, ModelConfig, option
    from genkit.data import ImageData
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
    from genkit.evaluate import estimate_nll, evaluate_run
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
    from genkit.priors import StandardNormal, fit_prior
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
    from genkit.run import resume_run, start_run
    from genkit.train import Callback, TrainConfig, Trainer

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'genkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
