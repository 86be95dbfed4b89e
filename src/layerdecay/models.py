"""Build a model from a text spec for the CLI, on the ``meta`` device (no memory, no weights).

Specs: ``timm:<name>``, ``torchvision:<name>``, ``transformers:<ConfigClass or ModelClass>``, a path to
an HF ``config.json`` (or its folder), or ``package.module:factory``. Each library is imported only here,
and only when its spec is used.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from layerdecay.errors import LayerDecayError

__all__ = ["ModelBuildError", "build_model"]


class ModelBuildError(LayerDecayError):
    """A model spec could not be turned into a model (the message says why)."""


def _timm(name: str) -> nn.Module:
    import timm

    if not timm.is_model(name):
        close = timm.list_models(f"*{name}*")[:5]
        hint = f" Close: {', '.join(close)}." if close else ""
        raise ModelBuildError(f"timm has no model {name!r}.{hint}")
    return timm.create_model(name, pretrained=False)


def _torchvision(name: str) -> nn.Module:
    import torchvision

    available = torchvision.models.list_models()
    if name not in available:
        raise ModelBuildError(f"torchvision has no model {name!r}; e.g. {', '.join(available[:5])}, ...")
    return torchvision.models.get_model(name, weights=None)


def _transformers_config(config: Any) -> nn.Module:
    import transformers

    architectures = getattr(config, "architectures", None) or []
    for arch in architectures:
        cls = getattr(transformers, arch, None)
        if cls is not None:
            return cls(config)
    return transformers.AutoModel.from_config(config)


def _transformers(name: str) -> nn.Module:
    import transformers

    obj = getattr(transformers, name, None)
    if obj is None:
        raise ModelBuildError(f"transformers has no class {name!r} (give a config class such as ViTConfig, "
                              "or a model class such as ViTForImageClassification).")
    if isinstance(obj, type) and issubclass(obj, transformers.PretrainedConfig):
        return _transformers_config(obj())
    if isinstance(obj, type) and issubclass(obj, transformers.PreTrainedModel):
        return obj(obj.config_class())
    raise ModelBuildError(f"transformers.{name} is neither a config class nor a model class.")


def _config_file(path: Path) -> nn.Module:
    import transformers

    file = path / "config.json" if path.is_dir() else path
    try:
        data = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelBuildError(f"cannot read {file}: {exc}") from exc
    model_type = data.pop("model_type", None)
    if model_type is None:
        raise ModelBuildError(f"{file} has no 'model_type', so its config class is unknown.")
    config = transformers.AutoConfig.for_model(model_type, **data)
    return _transformers_config(config)


def _import_local(module_name: str) -> Any:
    """Import ``module_name``, also from the current directory (the console script does not search it)."""
    cwd = str(Path.cwd())
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    finally:
        if added:
            sys.path.remove(cwd)


def _factory(spec: str) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    try:
        module = _import_local(module_name)
    except ImportError as exc:
        raise ModelBuildError(f"cannot import {module_name!r}: {exc}") from exc
    factory = getattr(module, attr, None)
    if factory is None:
        raise ModelBuildError(f"module {module_name!r} has no attribute {attr!r}.")
    return factory() if callable(factory) and not isinstance(factory, nn.Module) else factory


def build_model(spec: str, *, device: str = "meta") -> nn.Module:
    """Build the model named by ``spec`` on ``device`` (``meta`` by default: shapes only)."""
    kind, sep, rest = spec.partition(":")
    builders = {"timm": _timm, "torchvision": _torchvision, "transformers": _transformers}
    with torch.device(device):
        try:
            if sep and kind in builders:
                model = builders[kind](rest)
            elif spec.endswith(".json") or Path(spec).is_dir():
                model = _config_file(Path(spec))
            elif sep:
                model = _factory(spec)
            else:
                raise ModelBuildError(
                    f"model spec {spec!r} is not one of timm:<name>, torchvision:<name>, "
                    "transformers:<Class>, a config.json path, or package.module:factory."
                )
        except LayerDecayError:
            raise
        except ImportError as exc:
            raise ModelBuildError(f"building {spec!r} needs a library that is not installed: {exc}") from exc
        except Exception as exc:
            raise ModelBuildError(f"building {spec!r} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ModelBuildError(f"{spec!r} gave a {type(model).__name__}, not a torch.nn.Module.")
    return model
