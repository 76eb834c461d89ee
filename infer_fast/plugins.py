"""A user's plug-ins: modules that register methods, models or datasets, each loaded once by
name (the CLI before its parser is built; a lookup of a name nothing registered)."""
from __future__ import annotations

import importlib
import os
import threading
from typing import Any, Callable, Set, Tuple

# A user's plug-ins (modules registering methods, models or datasets), loaded by load_plugins:
# the modules this variable names (comma-separated), and the entry points of this group
PLUGINS_ENV = "INFER_FAST_PLUGINS"
PLUGINS_GROUP = "infer_fast.plugins"
PLUGINS_HINT = (f"a plug-in's methods, models and datasets are loaded with {PLUGINS_ENV}=module[,module...] "
                f"or an entry point of group {PLUGINS_GROUP!r}")


# Loaded once each, per process; a plug-in named in the variable later (another value) is loaded then.
# A thread's lookups wait while another thread loads them (no half-loaded registry); a plug-in's
# own lookups, in the loading thread, return at once ("loading").
_lock = threading.RLock()
_plugins = "not loaded"  # then "loading", "loaded" (for the value of PLUGINS_ENV in _loaded_for)
_loaded_for: "str | None" = None
_imported: Set[Tuple[str, str]] = set()  # the plug-ins loaded: (where named, name), never loaded again
# A plug-in that failed is imported again at the next lookup (a fix in a notebook takes effect
# without a restart): what it registered before it failed is registered again as the same
# definition, which the registries replace (a cell run again), not refuse.


def load_plugins() -> None:
    """Import the user's plug-ins (the CLI before its parser is built, so their methods are
    --method choices with their options' flags; a lookup of a name no method has, as a set's
    manifest makes): the entry points of group PLUGINS_GROUP of the installed distributions,
    then the modules PLUGINS_ENV names. Each loads once per process; the variable is read
    again on every call, and the modules it names since are loaded then (those it no longer
    names stay loaded). A ValueError naming the module and where it was named when one fails
    to load (its own error after a colon); it is imported again at the next call (fixed, it
    loads then), and a variable that no longer names it loads the others."""
    global _plugins, _loaded_for
    value = os.environ.get(PLUGINS_ENV, "")
    with _lock:
        if _plugins == "loading":  # (this thread: a plug-in's own lookup while it loads)
            return
        if _plugins == "loaded" and _loaded_for == value:
            return
        from importlib import metadata

        _plugins = "loading"
        try:
            for entry in metadata.entry_points(group=PLUGINS_GROUP):
                _load_once(("entry point", entry.value), entry.load,
                           f"{entry.value!r} (entry point {entry.name!r} of group {PLUGINS_GROUP!r})")
            for module in (m.strip() for m in value.split(",")):
                if module:
                    _load_once((PLUGINS_ENV, module), lambda: importlib.import_module(module),
                               f"{module!r} ({PLUGINS_ENV})")
        except BaseException:
            _plugins = "not loaded"  # (a failed one: imported again at the next call; an interrupt: the rest then)
            raise
        _plugins, _loaded_for = "loaded", value


def _load_once(key: Tuple[str, str], load: Callable[[], Any], what: str) -> None:
    """Load a plug-in not loaded yet (one that failed before: tried again)."""
    if key in _imported:
        return
    _load_plugin(load, what, key[1].split(":")[0])
    _imported.add(key)


def _load_plugin(load: Callable[[], Any], what: str, module: str) -> None:
    try:
        load()
    except Exception as exc:
        detail = " ".join(str(exc).split())
        # the plug-in itself (or its package) not found: the `infer-fast` script does not put the working
        # directory on sys.path, as `python -m` does (a module the plug-in imports is its own to install)
        missing = getattr(exc, "name", None) if isinstance(exc, ModuleNotFoundError) else None
        where = " (a module is found on sys.path: add its folder to PYTHONPATH)" \
            if missing and (module == missing or module.startswith(missing + ".")) else ""
        raise ValueError(f"plug-in module {what} failed to load: {type(exc).__name__}: {detail}{where}") from exc
