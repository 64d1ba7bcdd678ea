"""The persistent compilation cache: a rerun of the same sweep loads its programs from disk.

JAX can store compiled programs on disk and load them in a later process
(``jax_compilation_cache_dir``). A sweep turns that on for the time it runs, unless told not to:

1. the ``compilation_cache`` argument of ``run`` (a folder, or ``False``/``"off"``);
2. else the environment variable ``JAXSWEEP_CACHE_DIR`` (a folder, or ``off``);
3. else a cache the user configured for JAX (``jax_compilation_cache_dir``, set by
   ``jax.config.update`` or ``JAX_COMPILATION_CACHE_DIR``) is used as it is, thresholds and all;
4. else the user's cache folder: ``$XDG_CACHE_HOME/jaxsweep/xla`` (``~/.cache/jaxsweep/xla``;
   ``~/Library/Caches`` on macOS, ``%LOCALAPPDATA%`` on Windows).

In cases 1, 2 and 4 the sweep also caches small programs (JAX skips programs that compile in
under a second by default, and most of a sweep's are) and, when ``filelock`` is installed and
no limit was set, bounds the folder with JAX's own least-recently-used limit
(``jax_compilation_cache_max_size``, :data:`DEFAULT_MAX_BYTES`). Every setting is put back when
``run`` returns, so the rest of the program compiles as it did before.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import threading
import warnings
from collections.abc import Iterator
from typing import Any, NamedTuple

import jax
from jax import monitoring
from jax.experimental.compilation_cache import compilation_cache as _jax_cache

ENVIRONMENT_VARIABLE = "JAXSWEEP_CACHE_DIR"
DEFAULT_MAX_BYTES = 2 * 1024**3  # JAX evicts the least recently used programs beyond this
_OFF = ("off", "false", "0", "no", "none", "")


class CacheChoice(NamedTuple):
    """Where (and whether) a sweep's programs are cached, and who said so."""

    directory: str | None  # None: no persistent cache
    source: str  # "argument" | "environment" | "jax_config" | "default"
    managed: bool  # True when the sweep sets JAX's cache options for its own duration

    def describe(self) -> dict[str, Any]:
        """The JSON-ready record kept in ``result.environment["compilation_cache"]``."""
        return {"directory": self.directory, "source": self.source}


def default_directory() -> str:
    """The user's cache folder for jaxsweep's compiled programs (platformdirs' convention)."""
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or os.path.expanduser("~\\AppData\\Local")
        return os.path.join(base, "jaxsweep", "Cache", "xla")
    if sys.platform == "darwin":
        return os.path.expanduser("~/Library/Caches/jaxsweep/xla")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "jaxsweep", "xla")


def _is_off(value) -> bool:
    return value is False or (isinstance(value, str) and value.strip().lower() in _OFF)


def resolve(argument, environ=None, jax_directory: str | None = None) -> CacheChoice:
    """Decides where programs are cached (pure: reads nothing but its arguments).

    Args:
      argument: ``run``'s ``compilation_cache``: None (decide from the environment), a folder
        (``str`` or ``os.PathLike``), or ``False``/``"off"``.
      environ: the environment variables (``os.environ`` when None).
      jax_directory: ``jax.config.jax_compilation_cache_dir`` as the user left it.

    Raises:
      TypeError: ``argument`` is not None, False, a string or a path.
    """
    environ = os.environ if environ is None else environ
    if argument is not None:
        if argument is True:
            return CacheChoice(default_directory(), "argument", True)
        if not (argument is False or isinstance(argument, (str, os.PathLike))):
            raise TypeError(
                "compilation_cache: expected None, a folder, or False/'off' to disable it, "
                f"got {type(argument).__name__}"
            )
        if _is_off(argument):
            return CacheChoice(None, "argument", True)
        return CacheChoice(os.fspath(argument), "argument", True)
    if ENVIRONMENT_VARIABLE in environ:
        value = environ[ENVIRONMENT_VARIABLE]
        return CacheChoice(None if _is_off(value) else value, "environment", True)
    if jax_directory:
        return CacheChoice(jax_directory, "jax_config", False)
    return CacheChoice(default_directory(), "default", True)


def _settings(choice: CacheChoice) -> dict[str, Any]:
    """JAX's option values a managed cache runs under."""
    settings: dict[str, Any] = {"jax_compilation_cache_dir": choice.directory}
    if choice.directory is not None:
        # a sweep's small programs (initialisation, lane start) are worth keeping too
        settings["jax_persistent_cache_min_compile_time_secs"] = 0.0
        settings["jax_persistent_cache_min_entry_size_bytes"] = 0
        if jax.config.jax_compilation_cache_max_size == -1 and _has_filelock():
            settings["jax_compilation_cache_max_size"] = DEFAULT_MAX_BYTES
    return settings


def _has_filelock() -> bool:  # JAX's size limit needs it to evict safely
    return importlib.util.find_spec("filelock") is not None


@contextlib.contextmanager
def compilation_cache(argument) -> Iterator[CacheChoice]:
    """Runs the body with the persistent compilation cache ``resolve`` chose; restores after.

    JAX opens its cache once per process, at the first compilation with a folder set, so the
    cache is reset whenever the folder changes, on entry and on exit.
    """
    choice = resolve(argument, jax_directory=jax.config.jax_compilation_cache_dir)
    if choice.directory is not None and choice.managed:
        try:
            os.makedirs(choice.directory, exist_ok=True)
        except OSError as error:  # a read-only home costs speed, never the sweep
            warnings.warn(
                f"compilation_cache: cannot use {choice.directory} ({error}); compiling without "
                f"a persistent cache (pass compilation_cache=... or set {ENVIRONMENT_VARIABLE})",
                stacklevel=3,
            )
            choice = choice._replace(directory=None)
    if not choice.managed:
        yield choice
        return
    settings = _settings(choice)
    previous = {name: getattr(jax.config, name) for name in settings}
    changes_folder = previous["jax_compilation_cache_dir"] != choice.directory
    for name, value in settings.items():
        jax.config.update(name, value)
    if changes_folder:
        _jax_cache.reset_cache()
    try:
        yield choice
    finally:
        for name, value in previous.items():
            jax.config.update(name, value)
        if changes_folder:
            _jax_cache.reset_cache()


# ----------------------------------------------------------------------------- counting

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # a compile or a cache load
_HIT_EVENT = "/jax/compilation_cache/cache_hits"


class CompileLog:
    """Counts the XLA programs built while it is active, and how many came from the cache.

    ``with CompileLog() as log: ...`` then ``log.programs``, ``log.cache_hits``, ``log.seconds``
    (backend time: compiling, or loading from the cache). JAX reports compilations through
    ``jax.monitoring`` for the whole process, so programs compiled by other threads at the same
    time are counted too.
    """

    def __init__(self):
        self._active = False
        self.programs = 0
        self.cache_hits = 0
        self.seconds = 0.0
        self._lock = threading.Lock()

    def _on_duration(self, event: str, duration: float, **_) -> None:
        if self._active and event == _COMPILE_EVENT:
            with self._lock:
                self.programs += 1
                self.seconds += duration

    def _on_event(self, event: str, **_) -> None:
        if self._active and event == _HIT_EVENT:
            with self._lock:
                self.cache_hits += 1

    def __enter__(self) -> CompileLog:
        self._active = True
        monitoring.register_event_duration_secs_listener(self._on_duration)
        monitoring.register_event_listener(self._on_event)
        return self

    def __exit__(self, *exc) -> None:
        self._active = False  # counts stop here even where JAX cannot unregister listeners
        for name, listener in (
            ("unregister_event_duration_listener", self._on_duration),
            ("unregister_event_listener", self._on_event),
        ):
            unregister = getattr(monitoring, name, None)
            if unregister is not None:
                unregister(listener)

    def describe(self) -> dict[str, Any]:
        return {
            "programs": self.programs,
            "cache_hits": self.cache_hits,
            "seconds": round(self.seconds, 4),
        }
