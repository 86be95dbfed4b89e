"""The pluggy markers: the one place that names the project for pluggy."""

from __future__ import annotations

import pluggy

PROJECT_NAME = "layerdecay"
ENTRY_POINT_GROUP = "layerdecay"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
