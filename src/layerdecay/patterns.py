"""Name patterns for the ``no_weight_decay`` and ``lr_mult`` options.

A pattern is a glob (``*`` and ``?``, ``*`` crossing dots) matched against the normalized parameter
name or any of its module prefixes, so ``"head"`` covers ``head.weight`` and ``head.fc.bias``, and
``"blocks.*.attn"`` covers every attention parameter. A pattern starting with ``re:`` is a regular
expression that must match the whole name. All patterns of one option are compiled into one regex, so
matching costs one call per parameter.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from typing import Generic, TypeVar

from layerdecay.errors import ConfigError

__all__ = ["PatternSet"]

V = TypeVar("V")
REGEX_PREFIX = "re:"


def _pattern_regex(pattern: str, option: str) -> str:
    if pattern.startswith(REGEX_PREFIX):
        body = pattern[len(REGEX_PREFIX) :]
        if not body:
            raise ConfigError(f"{option} pattern {pattern!r} has an empty regular expression after 're:'.")
        try:
            re.compile(body)
        except re.error as exc:
            raise ConfigError(f"{option} pattern {pattern!r} is not a valid regular expression: {exc}.") from exc
        return f"(?:{body})"
    if not pattern or pattern != pattern.strip():
        raise ConfigError(f"{option} pattern {pattern!r} is empty or has surrounding spaces.")
    glob = fnmatch.translate(pattern)  # '(?s:...)\Z'
    return glob[: -len(r"\Z")] + r"(?:\..*)?"


class PatternSet(Generic[V]):
    """Patterns with a value each; :meth:`match` returns the first matching pattern's value."""

    def __init__(self, patterns: Mapping[str, V], option: str) -> None:
        self.option = option
        self.patterns: tuple[str, ...] = tuple(patterns)
        for p in self.patterns:
            if not isinstance(p, str):
                raise ConfigError(f"{option} patterns must be strings, got {p!r} ({type(p).__name__}).")
        self._values = tuple(patterns.values())
        self._hits = [0] * len(self.patterns)
        if self.patterns:
            alternatives = "|".join(
                f"(?P<p{i}>{_pattern_regex(p, option)})" for i, p in enumerate(self.patterns)
            )
            self._regex: re.Pattern[str] | None = re.compile(alternatives)
        else:
            self._regex = None

    @classmethod
    def of_names(cls, patterns: Iterable[str] | str | None, option: str) -> PatternSet[bool]:
        if patterns is None:
            patterns = ()
        if isinstance(patterns, str):
            patterns = (patterns,)
        elif isinstance(patterns, (bytes, Mapping)) or not isinstance(patterns, Iterable):
            raise ConfigError(
                f"{option} must be a pattern string or a list of them, got {patterns!r} ({type(patterns).__name__})."
            )
        return PatternSet(dict.fromkeys(patterns, True), option)

    def __bool__(self) -> bool:
        return self._regex is not None

    def match(self, name: str) -> tuple[str, V] | None:
        """(pattern, value) of the first pattern matching ``name``, or None."""
        if self._regex is None:
            return None
        m = self._regex.fullmatch(name)
        if m is None:
            return None
        index = int(m.lastgroup[1:])  # type: ignore[index]
        self._hits[index] += 1
        return self.patterns[index], self._values[index]

    def unused(self) -> list[str]:
        """Patterns that matched no parameter (or were always shadowed by an earlier one)."""
        return [p for p, hits in zip(self.patterns, self._hits, strict=True) if hits == 0]
