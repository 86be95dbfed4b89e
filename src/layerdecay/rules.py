"""Rule files: the planning options as data (TOML, JSON or YAML), for the CLI and training configs.

A rule file holds the keyword arguments of :func:`layerdecay.explain` that are plain data, e.g.::

    layer_decay = 0.65
    weight_decay = 0.05
    recipe = "timm"
    no_weight_decay = ["head.*", "re:.*\\\\.alpha"]
    min_scale = 0.0

    [lr_mult]
    head = 10.0

The file is parsed as data only (``tomllib``, ``json``, ``yaml.safe_load``): nothing in it is evaluated or
imported, so a rule file cannot name plugins or run code. Every value is checked here, with the file (and
the line, where the parser or the text gives it) in the message, so that a typo fails before any model is
built.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from layerdecay.errors import ConfigError
from layerdecay.patterns import PatternSet
from layerdecay.planning import check_number

__all__ = ["ALLOWED_KEYS", "MAX_DEPTH", "MAX_SIZE", "load_rules", "parse_rules"]

#: Largest rule file accepted, in bytes: rules are a few lines; anything bigger is a mistake.
MAX_SIZE = 1 << 20
#: Deepest nesting accepted (the top-level table is depth 1, ``lr_mult`` depth 2).
MAX_DEPTH = 4
#: The keys a rule file may hold: :func:`layerdecay.explain` keyword arguments that are plain data.
ALLOWED_KEYS = ("layer_decay", "weight_decay", "recipe", "no_weight_decay", "lr_mult", "min_scale", "strict")

_FORMATS = {".toml": "toml", ".json": "json", ".yaml": "yaml", ".yml": "yaml"}


def load_rules(path: str | Path, *, format: str | None = None) -> dict[str, Any]:
    """Read a rule file into keyword arguments for :func:`layerdecay.explain` (and ``param_groups``,
    ``build_optimizer``).

    Args:
        path: A ``.toml``, ``.json``, ``.yaml`` or ``.yml`` file.
        format: ``"toml"``, ``"json"`` or ``"yaml"`` to override the guess from the suffix.

    Returns:
        Only the keys the file sets, checked and normalized: numbers as floats, ``no_weight_decay`` as a
        list of strings, ``lr_mult`` as a dict of pattern -> float.

    Raises:
        ConfigError: The file is missing, too large, not UTF-8, malformed (with its line), too deeply
            nested, or holds an unknown key or a bad value.
    """
    path = Path(path)
    fmt = _format_of(path, format)
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_SIZE + 1)
    except OSError as exc:
        raise ConfigError(f"rule file {str(path)!r} cannot be read: {exc.strerror or exc}.") from exc
    if len(raw) > MAX_SIZE:
        raise ConfigError(
            f"rule file {str(path)!r} is larger than {MAX_SIZE} bytes; a rule file holds a few options, "
            "check that the path names the right file."
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"rule file {str(path)!r} is not UTF-8 text ({exc}).") from exc
    return parse_rules(text, fmt, source=str(path))


def parse_rules(text: str, format: str, *, source: str = "<rules>") -> dict[str, Any]:
    """Like :func:`load_rules`, for rules given as text; ``source`` names them in error messages."""
    if format not in ("toml", "json", "yaml"):
        raise ConfigError(f"rule format must be 'toml', 'json' or 'yaml', got {format!r}.")
    if len(text.encode("utf-8")) > MAX_SIZE:
        raise ConfigError(f"rules {source!r} are larger than {MAX_SIZE} bytes.")
    data = _parse(text, format, source)
    if data is None and format == "yaml":
        data = {}  # an empty YAML document
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"rule file {source!r} must hold a table of options at the top level, got {type(data).__name__}."
        )
    _check_depth(data, source)
    return _check_rules(data, text, source)


def _format_of(path: Path, format: str | None) -> str:
    if format is not None:
        return format
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ConfigError(
            f"rule file {str(path)!r} has suffix {path.suffix!r}; use .toml, .json, .yaml or .yml "
            "(or pass format=)."
        )
    return fmt


def _parse(text: str, fmt: str, source: str) -> Any:
    try:
        if fmt == "toml":
            return _parse_toml(text, source)
        if fmt == "json":
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError(
                    f"rule file {source!r} is not valid JSON: line {exc.lineno}, column {exc.colno}: {exc.msg}."
                ) from exc
        return _parse_yaml(text, source)
    except RecursionError as exc:
        raise ConfigError(f"rule file {source!r} is nested too deeply to parse (at most {MAX_DEPTH} levels).") from exc


def _parse_toml(text: str, source: str) -> Any:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError as exc:
            raise ConfigError(
                f"rule file {source!r} is TOML, which needs Python >= 3.11 or the 'tomli' package "
                "(pip install tomli); or write the rules as JSON."
            ) from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # The message ends with "(at line L, column C)"; newer Pythons also set exc.lineno.
        raise ConfigError(f"rule file {source!r} is not valid TOML: {exc}.") from exc


def _parse_yaml(text: str, source: str) -> Any:
    try:
        import yaml
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"rule file {source!r} is YAML, which needs the 'PyYAML' package (pip install pyyaml); "
            "or write the rules as TOML or JSON."
        ) from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"rule file {source!r} is not valid YAML: {where}{problem}.") from exc


def _check_depth(data: Any, source: str) -> None:
    """Reject nesting deeper than MAX_DEPTH; each container is visited once (YAML aliases share)."""
    seen: set[int] = set()
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if not isinstance(value, (Mapping, list, tuple)) or id(value) in seen:
            continue
        if depth > MAX_DEPTH:
            raise ConfigError(f"rule file {source!r} is nested more than {MAX_DEPTH} levels deep; rules are flat.")
        seen.add(id(value))
        children = value.values() if isinstance(value, Mapping) else value
        stack.extend((child, depth + 1) for child in children)


def _line_of(text: str, key: str, after: int = 0) -> int | None:
    """The first line (past line ``after``) that sets ``key`` in any of the three formats (``key = ``,
    ``"key": ``, ``key:``, a TOML ``[key]`` table), or None."""
    name = re.escape(key)
    pattern = re.compile(rf"""^\s*(?:["']?{name}["']?\s*[=:]|\[\s*["']?{name}["']?\s*\])""")
    for number, line in enumerate(text.splitlines(), start=1):
        if number > after and pattern.match(line):
            return number
    return None


def _at(source: str, line: int | None) -> str:
    return f"rule file {source!r}" + (f" (line {line})" if line is not None else "")


def _check_rules(data: Mapping[Any, Any], text: str, source: str) -> dict[str, Any]:
    unknown = [k for k in data if k not in ALLOWED_KEYS]
    if unknown:
        key = unknown[0]
        raise ConfigError(
            f"{_at(source, _line_of(text, str(key)))}: unknown key {key!r}; "
            f"the allowed keys are {', '.join(ALLOWED_KEYS)}."
        )
    out: dict[str, Any] = {}
    for key, value in data.items():
        line = _line_of(text, key)
        try:
            if key == "lr_mult" and isinstance(value, Mapping):
                start = line or 0
                for pattern, mult in value.items():  # point at the entry's own line
                    line = _line_of(text, str(pattern), after=start) or start or None
                    _check_value(key, {pattern: mult})
                line = start or None
            out[key] = _check_value(key, value)
        except ConfigError as exc:
            raise ConfigError(f"{_at(source, line)}: {exc}") from exc
    return out


def _check_value(key: str, value: Any) -> Any:
    if key == "layer_decay":
        return check_number("layer_decay", value, minimum=0.0, exclusive=True)
    if key == "weight_decay":
        return check_number("weight_decay", value, minimum=0.0)
    if key == "min_scale":
        return check_number("min_scale", value, minimum=0.0, maximum=1.0)
    if key == "recipe":
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"recipe must be a string, got {value!r} ({type(value).__name__}).")
        return value
    if key == "strict":
        if not isinstance(value, bool):
            raise ConfigError(f"strict must be true or false, got {value!r}.")
        return value
    if key == "no_weight_decay":
        patterns = [value] if isinstance(value, str) else value
        if not isinstance(patterns, list):
            raise ConfigError(f"no_weight_decay must be a list of pattern strings, got {type(value).__name__}.")
        PatternSet.of_names(patterns, "no_weight_decay")  # checks each pattern (strings, regexes)
        return list(patterns)
    # lr_mult
    if not isinstance(value, Mapping):
        raise ConfigError(f"lr_mult must be a table of pattern -> multiplier, got {type(value).__name__}.")
    mults = {p: check_number(f"lr_mult[{p!r}]", v, minimum=0.0, exclusive=True) for p, v in value.items()}
    PatternSet(mults, "lr_mult")
    return mults
