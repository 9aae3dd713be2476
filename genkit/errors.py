"""The few exception types genkit raises; the CLI turns each into one line on stderr."""

from __future__ import annotations


class GenkitError(Exception):
    """Base of every error genkit reports to a user: the message says what to do."""


class ConfigError(GenkitError, ValueError):
    """A configuration or command-line value is invalid."""


class ShapeError(GenkitError, ValueError):
    """A tensor or image does not have the shape a model expects."""


class PluginError(GenkitError):
    """A plugin is unknown, failed to load, failed to build, or misbehaves."""


class UnknownPluginError(PluginError, ConfigError):
    """No installed plugin has the name asked for: a bad configuration value as much as a plugin problem."""


class DataError(GenkitError):
    """A dataset or input file is missing, empty or unreadable."""


class CheckpointError(GenkitError):
    """A checkpoint, weights or config file is missing, truncated or tampered with."""


class TrainingError(GenkitError):
    """Training cannot continue (for example the loss became NaN or infinite)."""


class RunExistsError(GenkitError):
    """The output folder of a run already exists and overwriting was not asked for."""
