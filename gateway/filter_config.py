"""``[filters]``: which policy filters run, in what order, with what settings.

Each filter declares its settings as a frozen dataclass (STYLE §2); this module turns
``[filters.NAME]`` tables into those dataclasses, checking every key by its type
hint and then the filter's own ``validate``, so ``check-config`` names
``filters.NAME.KEY`` and the fix. A filter with no table runs with its defaults (the
content rules are on by default); ``enabled = false`` turns one off; ``[filters]
order`` changes the run order.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.pipeline import REGISTRY, EnabledFilter, FilterSpec

Fail = Callable[[str, str], None]


@dataclass(frozen=True, slots=True)
class FiltersSection:
    """The filters to run, in order (``always`` filters first)."""

    enabled: tuple[EnabledFilter, ...]

    def names(self) -> list[str]:
        return [item.spec.name for item in self.enabled]

    def settings(self, name: str) -> Any:
        """The settings of the enabled filter ``name``, or None when it is off."""
        return next((i.config for i in self.enabled if i.spec.name == name), None)


def _registry() -> tuple[dict[str, FilterSpec], tuple[str, ...]]:
    from gateway import filters  # registers every filter module

    return REGISTRY, filters.DEFAULT_ORDER


def read_filters(raw: Any, fail: Fail) -> FiltersSection:
    """Parse the ``[filters]`` table (or its absence: ``raw`` is None)."""
    registry, default_order = _registry()
    configurable = {n: s for n, s in registry.items() if not s.always}
    table = raw if raw is not None else {}
    if not isinstance(table, dict):
        fail("filters", "expected a [filters] table")
        table = {}
    order = _read_order(table.get("order"), configurable, default_order, fail)
    for key in table:
        if key != "order" and key not in configurable:
            close = difflib.get_close_matches(key, list(configurable), n=1)
            hint = f'; did you mean "{close[0]}"?' if close else ""
            fail(f"filters.{key}", f"no such filter{hint}; known: {', '.join(configurable)}")
    enabled = [EnabledFilter(s, s.config_type()) for s in registry.values() if s.always]
    for name in order:
        spec = configurable[name]
        section = table.get(name, {})
        if not isinstance(section, dict):
            fail(f"filters.{name}", f"expected a [filters.{name}] table")
            continue
        # A filter that is off by default (ClamAV: it needs a clamd to talk to) is turned
        # on by writing its section, as CONTRACT.md says; ``enabled`` decides otherwise.
        on = section.get("enabled", spec.default_on or name in table)
        if not isinstance(on, bool):
            fail(f"filters.{name}.enabled", f"expected true or false, got {on!r}")
            continue
        if not on:
            continue  # off: its settings (required keys too) do not matter
        settings = _read_settings(spec, section, fail)
        if on and settings is not None:
            enabled.append(EnabledFilter(spec, settings))
    return FiltersSection(tuple(enabled))


def _read_order(
    raw: Any, known: dict[str, FilterSpec], default: tuple[str, ...], fail: Fail
) -> list[str]:
    rest = [n for n in default if n in known] + [n for n in known if n not in default]
    if raw is None:
        return rest
    if not isinstance(raw, list) or not all(isinstance(n, str) for n in raw):
        fail("filters.order", f'expected a list of filter names, e.g. ["{", ".join(rest)}"]')
        return rest
    unknown = [n for n in raw if n not in known]
    if unknown:
        fail("filters.order", f"no such filter: {', '.join(unknown)}; known: {', '.join(known)}")
    if len(set(raw)) != len(raw):
        fail("filters.order", "a filter is named twice; name each once")
    listed = [n for n in dict.fromkeys(raw) if n in known]
    # Filters the list leaves out keep running after it: a new filter is never
    # silently off because an old config predates it.
    return listed + [n for n in rest if n not in listed]


def _read_settings(spec: FilterSpec, section: dict[str, Any], fail: Fail) -> Any:
    hints = typing.get_type_hints(spec.config_type)
    fields = {f.name: f for f in dataclasses.fields(spec.config_type)}
    values: dict[str, Any] = {}
    ok = True
    for key, raw in section.items():
        if key == "enabled":
            continue
        where = f"filters.{spec.name}.{key}"
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f'; did you mean "{close[0]}"?' if close else f"; known: {', '.join(fields)}"
            fail(where, f"unknown key{hint}")
            ok = False
            continue
        value, problem = _coerce(raw, hints[key])
        if problem:
            fail(where, problem)
            ok = False
        else:
            values[key] = value
    if not ok:
        return None
    settings = spec.config_type(**values)
    if spec.validate is not None:
        problems = spec.validate(settings)
        for problem in problems:
            key, _, message = problem.partition(": ")
            fail(f"filters.{spec.name}.{key}", message)
        if problems:
            return None
    return settings


def _coerce(raw: Any, hint: Any) -> tuple[Any, str | None]:
    """``raw`` as the type ``hint`` wants, or a problem saying what to write."""
    if hint is bool:
        return (
            (raw, None) if isinstance(raw, bool) else (None, f"expected true or false, got {raw!r}")
        )
    if hint is int:
        if isinstance(raw, bool) or not isinstance(raw, int) or raw <= 0:
            return None, f"expected a positive integer, got {raw!r}"
        return raw, None
    if hint is float:
        if isinstance(raw, bool) or not isinstance(raw, int | float) or raw <= 0:
            return None, f"expected a positive number, got {raw!r}"
        return float(raw), None
    if hint is str:
        if not isinstance(raw, str) or not raw:
            return None, f"expected a non-empty string, got {raw!r}"
        return raw, None
    if typing.get_origin(hint) is tuple:
        if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
            return None, f'expected a list of strings, e.g. ["a", "b"], got {raw!r}'
        return tuple(raw), None
    return None, f"cannot be set from the config file (type {hint})"
