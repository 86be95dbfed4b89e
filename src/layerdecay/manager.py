"""Plugin discovery and the facade: the only module that calls hooks.

:func:`create_plugin_host` builds an isolated :class:`PluginHost` (entry points, built-ins, runtime
rules); nothing is discovered at import time. The module-level API uses a default host, created on first
use and rebuilt whenever the plugin environment variables or the runtime registrations change.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from importlib import metadata
from typing import Any

import pluggy

from layerdecay import defaults, generic, hookspecs
from layerdecay._markers import ENTRY_POINT_GROUP, PROJECT_NAME
from layerdecay.errors import LayerDecayError, PluginError
from layerdecay.model_view import ModelView
from layerdecay.policy import Policy

__all__ = [
    "ENV_ALLOW",
    "ENV_BLOCK",
    "ENV_NO_AUTOLOAD",
    "PluginHost",
    "PluginInfo",
    "create_plugin_host",
    "default_host",
    "register",
    "unregister",
]

ENV_ALLOW = "LAYERDECAY_PLUGINS"
ENV_BLOCK = "LAYERDECAY_DISABLE_PLUGINS"
ENV_NO_AUTOLOAD = "LAYERDECAY_DISABLE_PLUGIN_AUTOLOAD"

_BUILTINS = ((defaults.PLUGIN_NAME, defaults), (generic.PLUGIN_NAME, generic))
_BLOCKABLE_BUILTINS = frozenset({generic.PLUGIN_NAME})
_HOOK_PREFIX = "layerdecay_"


@dataclass(frozen=True)
class PluginInfo:
    """One plugin as the host sees it (what ``layerdecay plugins`` prints).

    Attributes:
        name: The name used everywhere: the entry-point name, ``core``/``generic`` for built-ins.
        source: ``builtin``, ``entry point``, ``runtime`` (``layerdecay.register``) or ``call``
            (``plugins=[...]``).
        distribution: The installed distribution that provides it, if any.
        version: That distribution's version.
        hooks: The hooks it implements.
        status: ``loaded``, ``disabled`` (block-list), ``not allowed`` (allow-list), ``not autoloaded``
            or ``failed``.
        error: Why it failed, for ``failed``.
    """

    name: str
    source: str
    distribution: str | None = None
    version: str | None = None
    hooks: tuple[str, ...] = ()
    status: str = "loaded"
    error: str | None = None


def _names_from_env(var: str) -> frozenset[str] | None:
    value = os.environ.get(var, "").strip()
    if not value:
        return None
    return frozenset(n.strip() for n in value.split(",") if n.strip())


def _env_flag(var: str) -> bool:
    return os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}


def disable_hint(name: str, distribution: str | None = None) -> str:
    """How to switch a plugin off, for messages that blame it."""
    hint = f"disable it with {ENV_BLOCK}={name} (or disable=[{name!r}])"
    if distribution:
        hint += f", or uninstall {distribution}"
    return hint


def _describe(name: str, source: str, distribution: str | None, version: str | None) -> str:
    if distribution:
        return f"plugin {name!r} ({source}, distribution {distribution} {version})"
    return f"plugin {name!r} ({source})"


def _plugin_name(plugin: object) -> str:
    return str(
        getattr(plugin, "__name__", None)
        or getattr(plugin, "name", None)
        or f"{type(plugin).__name__}@{id(plugin):x}"
    )


class PluginHost:
    """A plugin manager with its plugins registered, and the typed facade over its hooks.

    Immutable once built: :meth:`extended` returns a new host with more plugins, so one call's
    ``plugins=[...]`` never leaks into another call or thread.
    """

    def __init__(self, pm: pluggy.PluginManager, infos: Sequence[PluginInfo]) -> None:
        self._pm = pm
        self._infos = tuple(infos)
        self._sources = {info.name: info.source for info in self._infos}
        self._failed = tuple(info for info in self._infos if info.status == "failed")
        self._call_order: dict[str, tuple[Any, ...]] = {}
        for spec_name in ("layerdecay_num_layers", "layerdecay_layer_id", "layerdecay_param_policy",
                          "layerdecay_lr_scale"):
            caller = getattr(pm.hook, spec_name)
            # pluggy keeps implementations in reverse call order.
            self._call_order[spec_name] = tuple(reversed(caller.get_hookimpls()))

    # -- introspection -----------------------------------------------------------------------------

    @property
    def plugins(self) -> tuple[PluginInfo, ...]:
        """Every plugin known to this host, loaded or not, in registration order."""
        return self._infos

    def raise_for_failures(self) -> None:
        """Raise :class:`PluginError` if an installed plugin failed to load."""
        failed = self._failed
        if failed:
            lines = "\n".join(f"  - {info.error}" for info in failed)
            raise PluginError(f"{len(failed)} layerdecay plugin(s) failed to load:\n{lines}",
                              plugin=failed[0].name)

    def extended(self, plugins: Iterable[object], *, source: str = "call") -> PluginHost:
        """A new host with ``plugins`` registered after (so taking precedence over) this host's."""
        pm = _new_plugin_manager()
        infos = list(self._infos)
        for name, plugin in self._pm.list_name_plugin():
            if plugin is not None:
                pm.register(plugin, name=name)
        taken = {name for name, _ in self._pm.list_name_plugin()}
        for plugin in plugins:
            name = _plugin_name(plugin)
            while name in taken:
                name += "'"
            taken.add(name)
            hooks = _register(pm, plugin, name, describe=_describe(name, source, None, None))
            infos.append(PluginInfo(name=name, source=source, hooks=hooks))
        return PluginHost(pm, infos)

    # -- hook calls (the only place that calls plugins) ---------------------------------------------

    def _call(self, impl: Any, hook: str, kwargs: dict[str, Any]) -> Any:
        try:
            return impl.function(*map(kwargs.__getitem__, impl.argnames))
        except LayerDecayError:
            raise
        except Exception as exc:
            raise PluginError(
                f"plugin {impl.plugin_name!r} raised {type(exc).__name__} in {hook}: {exc}. "
                f"The plugin is at fault; {disable_hint(impl.plugin_name, None)}.",
                plugin=impl.plugin_name,
            ) from exc

    def _first(self, hook: str, kwargs: dict[str, Any]) -> tuple[Any, str] | None:
        for impl in self._call_order[hook]:
            answer = self._call(impl, hook, kwargs)
            if answer is not None:
                return answer, impl.plugin_name
        return None

    def num_layers(self, view: ModelView, recipe: str | None) -> tuple[int, str] | None:
        """(layer count, answering plugin), or None when no plugin claims the model."""
        claim = self.claim(view, recipe)
        return None if claim is None else (claim[0], claim[1])

    def claim(self, view: ModelView, recipe: str | None) -> tuple[int, str, tuple[str, ...]] | None:
        """(layer count, owner, rivals), or None when no plugin claims the model.

        The owner is the first (latest-registered) plugin that answers ``layerdecay_num_layers``. The
        plugins of the same source after it (two installed plugins, or two rules of one call) are asked
        too, so that two plugins claiming one model are reported (rivals) rather than silently shadowed.
        A plugin of a later source (a registered rule, a call's ``plugins=``) overriding an installed one
        is deliberate and documented precedence, not a rivalry. ``trylast`` implementations (the generic
        fallback) are skipped, since answering only when nobody else does is their purpose.
        """
        kwargs = {"model": view, "recipe": recipe}
        impls = self._call_order["layerdecay_num_layers"]
        found = None
        for index, impl in enumerate(impls):
            answer = self._call(impl, "layerdecay_num_layers", kwargs)
            if answer is not None:
                found = (answer, impl.plugin_name, index)
                break
        if found is None:
            return None
        count, plugin, index = found
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise PluginError(
                f"plugin {plugin!r} answered layerdecay_num_layers with {count!r}; "
                "the contract is an int >= 1 (or None when the model is not its own).",
                plugin=plugin,
            )
        rivals = []
        source = self._sources.get(plugin)
        for impl in impls[index + 1:]:
            if impl.trylast or self._sources.get(impl.plugin_name) != source:
                continue
            try:
                answer = self._call(impl, "layerdecay_num_layers", kwargs)
            except PluginError:
                raise
            except LayerDecayError:
                answer = True  # e.g. UnknownRecipeError: it recognized the model as its own
            if answer is not None:
                rivals.append(impl.plugin_name)
        return count, plugin, tuple(rivals)

    def layer_id(self, view: ModelView, recipe: str | None, num_layers: int
                 ) -> tuple[Callable[[str], int] | Sequence[int], str] | None:
        """(name -> layer id function, or the ids aligned with ``view.names``; answering plugin), or None."""
        found = self._first("layerdecay_layer_id",
                            {"model": view, "recipe": recipe, "num_layers": num_layers})
        if found is None or callable(found[0]):
            return found
        ids, plugin = found
        if isinstance(ids, (list, tuple)) and len(ids) == len(view):
            return found
        shown = f"a {type(ids).__name__} of {len(ids)} ids" if isinstance(ids, (list, tuple)) else repr(ids)
        raise PluginError(
            f"plugin {plugin!r} answered layerdecay_layer_id with {shown}; the contract is a function "
            f"name -> int, or a list of {len(view)} ints aligned with model.names.",
            plugin=plugin,
        )

    def policies(self, view: ModelView, recipe: str | None) -> list[tuple[str, Policy]]:
        """Every plugin's policy, highest precedence first, as (plugin name, policy)."""
        out = []
        kwargs = {"model": view, "recipe": recipe}
        for impl in self._call_order["layerdecay_param_policy"]:
            policy = self._call(impl, "layerdecay_param_policy", kwargs)
            if policy is None:
                continue
            if not callable(policy):
                raise PluginError(
                    f"plugin {impl.plugin_name!r} answered layerdecay_param_policy with {policy!r}; "
                    "the contract is a function (name, param, module) -> Decision | None.",
                    plugin=impl.plugin_name,
                )
            out.append((impl.plugin_name, policy))
        return out

    def lr_scales(self, view: ModelView, recipe: str | None, num_layers: int, layer_decay: float
                  ) -> tuple[list[float], str]:
        """(one scale per layer id, answering plugin); the core's default always answers."""
        found = self._first(
            "layerdecay_lr_scale",
            {"model": view, "recipe": recipe, "num_layers": num_layers, "layer_decay": layer_decay},
        )
        assert found is not None, "the core's default scale provider is always registered"
        scales, plugin = found
        if isinstance(scales, (str, bytes)) or not isinstance(scales, Iterable):
            raise PluginError(
                f"plugin {plugin!r} answered layerdecay_lr_scale with {scales!r} ({type(scales).__name__}); "
                f"the contract is a sequence of {num_layers} finite positive floats, one per layer id.",
                plugin=plugin,
            )
        return list(scales), plugin



def _new_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    return pm


def _register(pm: pluggy.PluginManager, plugin: object, name: str, *, describe: str) -> tuple[str, ...]:
    """Register ``plugin`` and check it declares only known hooks; return the hooks it implements."""
    try:
        pm.register(plugin, name=name)
    except (pluggy.PluginValidationError, ValueError) as exc:
        raise PluginError(f"{describe} is malformed: {exc}", plugin=name) from exc
    callers = pm.get_hookcallers(plugin) or []
    hooks = tuple(sorted(c.name for c in callers))
    problems = [f"{c.name} is not a layerdecay hook" for c in callers if not c.has_spec()]
    for impl_caller in callers:
        for impl in impl_caller.get_hookimpls():
            if impl.plugin is plugin and (impl.wrapper or impl.hookwrapper):
                problems.append(f"{impl_caller.name} is declared as a wrapper, which layerdecay does not call")
    marked = set(hooks)
    problems += [
        f"{attr} is not marked with @layerdecay.hookimpl"
        for attr in dir(plugin)
        if attr.startswith(_HOOK_PREFIX) and attr not in marked and callable(getattr(plugin, attr, None))
    ]
    if problems:
        pm.unregister(plugin)
        known = ", ".join(sorted(n for n in dir(hookspecs) if n.startswith(_HOOK_PREFIX)))
        raise PluginError(f"{describe} is malformed: {'; '.join(problems)}. Known hooks: {known}.",
                          plugin=name)
    return hooks


def create_plugin_host(
    *,
    autoload: bool | None = None,
    enable: Iterable[str] | None = None,
    disable: Iterable[str] | None = None,
    plugins: Iterable[object] = (),
) -> PluginHost:
    """Build an isolated plugin host.

    Args:
        autoload: Load plugins from the ``layerdecay`` entry-point group. None reads
            ``LAYERDECAY_DISABLE_PLUGIN_AUTOLOAD`` (set -> no autoload).
        enable: Allow-list of entry-point names; only these load. None reads ``LAYERDECAY_PLUGINS``
            (comma-separated); unset means all.
        disable: Block-list of plugin names (entry points, or the built-in ``generic`` fallback);
            joined with ``LAYERDECAY_DISABLE_PLUGINS``.
        plugins: Plugin objects registered last, so they take precedence over everything else.

    A plugin that fails to import, or declares an unknown hook, is recorded with ``status="failed"``;
    :meth:`PluginHost.raise_for_failures` turns that into an error (the API calls it before planning).
    """
    if autoload is None:
        autoload = not _env_flag(ENV_NO_AUTOLOAD)
    allow = frozenset(enable) if enable is not None else _names_from_env(ENV_ALLOW)
    block = frozenset(disable or ()) | (_names_from_env(ENV_BLOCK) or frozenset())

    pm = _new_plugin_manager()
    infos: list[PluginInfo] = []
    for name, module in _BUILTINS:
        if name in block and name in _BLOCKABLE_BUILTINS:
            infos.append(PluginInfo(name=name, source="builtin", status="disabled"))
            continue
        hooks = _register(pm, module, name, describe=_describe(name, "builtin", None, None))
        infos.append(PluginInfo(name=name, source="builtin", hooks=hooks))

    for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        dist = getattr(ep, "dist", None)
        dist_name = dist.metadata["Name"] if dist is not None else None
        version = dist.version if dist is not None else None
        info = PluginInfo(name=ep.name, source="entry point", distribution=dist_name, version=version)
        if not autoload:
            infos.append(_replace(info, status="not autoloaded"))
            continue
        if ep.name in block:
            infos.append(_replace(info, status="disabled"))
            continue
        if allow is not None and ep.name not in allow:
            infos.append(_replace(info, status="not allowed"))
            continue
        describe = _describe(ep.name, f"entry point {ep.value!r}", dist_name, version)
        try:
            plugin = ep.load()
            hooks = _register(pm, plugin, ep.name, describe=describe)
        except PluginError as exc:
            infos.append(_replace(info, status="failed", error=f"{exc}; {disable_hint(ep.name, dist_name)}"))
            continue
        except Exception as exc:
            error = (f"{describe} failed to load: {type(exc).__name__}: {exc}; "
                     f"{disable_hint(ep.name, dist_name)}")
            infos.append(_replace(info, status="failed", error=error))
            continue
        infos.append(_replace(info, hooks=hooks))

    host = PluginHost(pm, infos)
    plugins = list(plugins)
    return host.extended(plugins, source="runtime") if plugins else host


def _replace(info: PluginInfo, **changes: Any) -> PluginInfo:
    return replace(info, **changes)


# -- the default host and runtime registration ----------------------------------------------------

_lock = threading.Lock()
_runtime_plugins: list[object] = []
_default: tuple[tuple[Any, ...], PluginHost] | None = None


def _environment_key() -> tuple[Any, ...]:
    return (
        os.environ.get(ENV_ALLOW),
        os.environ.get(ENV_BLOCK),
        os.environ.get(ENV_NO_AUTOLOAD),
        tuple(id(p) for p in _runtime_plugins),
    )


def default_host() -> PluginHost:
    """The host the module-level API uses: installed plugins plus :func:`register`-ed rules."""
    global _default
    with _lock:
        key = _environment_key()
        if _default is None or _default[0] != key:
            _default = (key, create_plugin_host(plugins=list(_runtime_plugins)))
        return _default[1]


def register(plugin: object) -> object:
    """Register a rule object for every later call in this process; it overrides installed plugins.

    The object is validated at once: an unknown or unmarked hook raises :class:`PluginError`.
    Returns ``plugin``, so this works as a class or module decorator.
    """
    _register(_new_plugin_manager(), plugin, _plugin_name(plugin),
              describe=_describe(_plugin_name(plugin), "runtime", None, None))
    with _lock:
        if plugin not in _runtime_plugins:
            _runtime_plugins.append(plugin)
    return plugin


def unregister(plugin: object) -> None:
    """Undo :func:`register`; unknown objects are ignored."""
    with _lock:
        if plugin in _runtime_plugins:
            _runtime_plugins.remove(plugin)
