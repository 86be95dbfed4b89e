"""Shared fixtures for the core's tests: small hand-made models with known structure."""

from __future__ import annotations

import pytest
import torch

import layerdecay
from tests.models import TinyNet, TinyRule


@pytest.fixture
def tiny() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet()


@pytest.fixture
def bare_host() -> layerdecay.PluginHost:
    """A host with no installed plugins: only the core's defaults and the generic fallback."""
    return layerdecay.create_plugin_host(autoload=False)


@pytest.fixture
def tiny_host(bare_host: layerdecay.PluginHost) -> layerdecay.PluginHost:
    return bare_host.extended([TinyRule()])
