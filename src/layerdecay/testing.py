"""Helpers for testing plugins without the model libraries: models rebuilt from parameter-name lists.

``model_from_params`` turns ``[name, shape, requires_grad]`` entries (as ``named_parameters()`` lists
them) into a module tree on the ``meta`` device with exactly those names and shapes, so a plugin can be
tested against a library version that is not installed (transformers 4, the research repos).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["model_from_params"]

_classes: dict[str, type[nn.Module]] = {}


def _module_class(name: str) -> type[nn.Module]:
    if name not in _classes:
        _classes[name] = type(name, (nn.Module,), {"__module__": __name__})
    return _classes[name]


def model_from_params(
    params: Iterable[Sequence[Any]],
    *,
    module_types: Mapping[str, str] | None = None,
    device: str | torch.device = "meta",
) -> nn.Module:
    """Build a module tree holding parameters with the given names and shapes.

    Args:
        params: ``(name, shape)`` or ``(name, shape, requires_grad)`` entries.
        module_types: Regex (full match on the module path) -> class name for that module, e.g.
            ``{r".*(norm|layernorm)\\w*": "LayerNorm"}``, so that rules by module type can be exercised.
            Unmatched modules are plain ``Module`` subclasses named ``Module``; modules whose children are
            all numbered are ``nn.ModuleList``.
        device: Where the tensors live (``meta``: no memory).
    """
    types = [(re.compile(p), n) for p, n in (module_types or {}).items()]
    entries = [(e[0], tuple(e[1]), bool(e[2]) if len(e) > 2 else True) for e in params]

    children: dict[str, list[str]] = {"": []}
    for name, _, _ in entries:
        parts = name.split(".")
        for depth in range(1, len(parts)):
            path = ".".join(parts[:depth])
            if path not in children:
                children[path] = []
                children[".".join(parts[: depth - 1])].append(parts[depth - 1])

    def make(path: str) -> nn.Module:
        kids = children.get(path, [])
        if kids and all(k.isdigit() for k in kids) and path:
            # Indices may have gaps (``cpb_mlp.0``, ``cpb_mlp.2``): keep them as the names.
            module: nn.Module = nn.ModuleList()
            for k in sorted(kids, key=int):
                module.add_module(k, make(f"{path}.{k}"))
            return module
        cls_name = next((n for rx, n in types if rx.fullmatch(path)), "Module")
        module = _module_class(cls_name)()
        for k in kids:
            module.add_module(k, make(f"{path}.{k}" if path else k))
        return module

    root = make("")
    for name, shape, requires_grad in entries:
        owner_path, _, attr = name.rpartition(".")
        owner = root.get_submodule(owner_path) if owner_path else root
        owner.register_parameter(attr, nn.Parameter(torch.empty(shape, device=device), requires_grad=requires_grad))
    return root
