"""A user's plug-ins: modules that register methods, models or datasets, loaded once by
name (the CLI before its parser is built; a lookup of a name nothing registered)."""
from __future__ import annotations

import importlib
import os
from typing import Any, Callable

# A user's plug-ins (modules registering methods, models or datasets), loaded by load_plugins:
# the modules this variable names (comma-separated), and the entry points of this group
PLUGINS_ENV = "INFER_FAST_PLUGINS"
PLUGINS_GROUP = "infer_fast.plugins"
PLUGINS_HINT = (f"a plug-in's methods, models and datasets are loaded with {PLUGINS_ENV}=module[,module...] "
                f"or an entry point of group {PLUGINS_GROUP!r}")


_plugins = "not loaded"  # then "loading" (a plug-in's own lookups do not load them again), "loaded"
_failed: "ValueError | None" = None  # a load that failed: said again, not retried


def load_plugins() -> None:
    """Import the user's plug-ins once (the CLI before its parser is built, so their methods
    are --method choices with their options' flags; a lookup of a name no method has, as a
    set's manifest makes): the entry points of group PLUGINS_GROUP of the installed
    distributions, then the modules PLUGINS_ENV names. A ValueError naming the module and
    where it was named when one fails to load (its own error after a colon)."""
    global _plugins, _failed
    if _failed is not None:  # (a retry would run the module's registrations again and hide its error)
        raise _failed
    if _plugins != "not loaded":
        return
    from importlib import metadata

    _plugins = "loading"
    try:
        for entry in metadata.entry_points(group=PLUGINS_GROUP):
            _load_plugin(entry.load, f"{entry.value!r} (entry point {entry.name!r} of group {PLUGINS_GROUP!r})")
        for module in (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",")):
            if module:
                _load_plugin(lambda: importlib.import_module(module), f"{module!r} ({PLUGINS_ENV})")
    except ValueError as exc:
        _failed = exc
        raise
    except BaseException:
        _plugins = "not loaded"  # (an interrupt: the next lookup loads them)
        raise
    _plugins = "loaded"


def _load_plugin(load: Callable[[], Any], what: str) -> None:
    try:
        load()
    except Exception as exc:
        detail = " ".join(str(exc).split())
        raise ValueError(f"plug-in module {what} failed to load: {type(exc).__name__}: {detail}") from exc
