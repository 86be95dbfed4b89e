"""Exception and warning types raised by layerdecay.

Every error the library raises on purpose derives from :class:`LayerDecayError`, so a caller can catch
the library's own failures without swallowing bugs elsewhere.  Each message names the value, parameter or
plugin at fault and says what to do.
"""

from __future__ import annotations


class LayerDecayError(Exception):
    """Base class of every error raised by layerdecay."""


class ConfigError(LayerDecayError, ValueError):
    """An argument has a value that cannot be used (bad number, unknown name, malformed pattern)."""


class UnknownRecipeError(ConfigError):
    """The requested recipe is not offered by the plugin that owns the model."""


class UnknownOptimizerError(ConfigError):
    """The optimizer name is found neither in ``torch.optim`` nor in timm's optimizer registry."""


class ModelError(LayerDecayError, TypeError):
    """The model cannot be planned (not an ``nn.Module``, no trainable parameters, ...)."""


class PluginError(LayerDecayError):
    """A plugin failed to load, or broke the contract of a hook it implements."""

    def __init__(self, message: str, *, plugin: str | None = None) -> None:
        super().__init__(message)
        self.plugin = plugin


class PlanMismatchError(LayerDecayError):
    """An optimizer or its saved state does not match the plan of the model it is used with."""


class LayerDecayWarning(UserWarning):
    """A plan was built, but something in it deserves attention (fallback used, pattern unused, ...)."""


class PlanError(LayerDecayError):
    """A plan cannot be trusted: a hook broke its contract, or ``strict=True`` and the plan has warnings."""
