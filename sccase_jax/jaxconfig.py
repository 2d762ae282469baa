"""JAX settings of the package: the persistent compilation cache.

XLA compiles every jitted function of a fit afresh in each new process: at 2,000 cells that
is seconds, more than the iterations themselves.  :func:`enable_compilation_cache` points
JAX's persistent compilation cache at a directory, so that a second run with the same shapes
loads the compiled programs from disk.  The command line enables it by default; from Python
call it once, before the first fit.
"""

from __future__ import annotations

import os

__all__ = ["CACHE_ENV", "default_cache_dir", "enable_compilation_cache"]

# The environment variable naming the cache directory; "off" (or "0", "") disables the cache.
CACHE_ENV = "SCCASE_JAX_CACHE"


def default_cache_dir() -> str | None:
    """``$SCCASE_JAX_CACHE``, else ``$XDG_CACHE_HOME/sccase_jax/xla`` (``~/.cache/...``);
    ``None`` when the variable says off."""
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        return None if value.strip().lower() in ("", "0", "off", "false", "no") else value
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "sccase_jax", "xla")


def enable_compilation_cache(path: str | None = "default") -> str | None:
    """Cache compiled XLA programs in ``path`` (``"default"``: :func:`default_cache_dir`;
    ``None``: leave the cache off).  Every program is cached whatever its compile time.
    Returns the directory in use, or ``None`` when off or when it cannot be created."""
    import jax

    if path == "default":
        path = default_cache_dir()
    if path is None:
        return None
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return None  # a read-only home: run without the cache
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return path
