"""Checks of user input, and the one error type that reports it: the bottom layer.

Every check returns the value in its canonical form (a Python ``int``, ``float``, ...) or
raises :class:`InputError` naming the argument and the value, in one line (the command
line prints it without a traceback).  Nothing here imports JAX at import time.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp

__all__ = [
    "InputError",
    "check_bool",
    "check_choice",
    "check_dtype",
    "check_int",
    "check_keep_prob",
    "check_matrix",
    "check_real",
    "check_seed",
    "default_dtype",
    "is_real",
    "x64_enabled",
]


class InputError(ValueError):
    """Bad user input, reported in one line (the CLI prints it without a traceback)."""


def is_real(value) -> bool:
    """A real number: a Python or NumPy int or float, or a 0-d real array (not a bool)."""
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, (int, float, np.integer, np.floating)):
        return True
    return (hasattr(value, "ndim") and hasattr(value, "dtype") and value.ndim == 0
            and np.dtype(value.dtype).kind in "iuf")


def check_int(name: str, value, minimum: int | None = None, *, integral_float: bool = True) -> int:
    """``value`` as a Python int, else an :class:`InputError` naming ``name``.

    Python and NumPy integers are accepted, and (with ``integral_float``) floats with an
    integral value such as ``30.0``; bools, strings, None and other floats are not.
    """
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if not ok and integral_float and isinstance(value, (float, np.floating)):
        ok = bool(np.isfinite(value)) and float(value).is_integer()
    if not ok:
        raise InputError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise InputError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_real(name: str, value, minimum: float | None = 0.0, maximum: float | None = None) -> float:
    """``value`` as a finite Python float in ``[minimum, maximum]``, else an :class:`InputError`."""
    ok = is_real(value) and bool(np.isfinite(value))
    if ok:
        v = float(value)
        ok = (minimum is None or v >= minimum) and (maximum is None or v <= maximum)
    if not ok:
        if maximum is not None:
            want = f"in [{minimum:g}, {maximum:g}]"
        elif minimum is not None:
            want = f"a finite number >= {minimum:g}"
        else:
            want = "a finite number"
        raise InputError(f"{name} must be {want}, got {value!r}")
    return v


def check_keep_prob(name: str, value) -> float:
    """A keep probability: a number in (0, 1]."""
    if not (is_real(value) and 0.0 < float(value) <= 1.0):
        raise InputError(f"{name} must be in (0, 1], got {value!r}")
    return float(value)


def check_seed(name: str, value, low: int = 0, high: int = 2**32 - 1) -> int:
    """A seed: a Python or NumPy integer (not a bool) in ``[low, high]`` (what NumPy and
    scikit-learn accept)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{name} must be an integer, got {value!r}")
    if not low <= int(value) <= high:
        raise InputError(f"{name} must be an integer in [{low}, {high}], got {value}")
    return int(value)


def check_bool(name: str, value) -> bool:
    """True or False (a NumPy bool too), nothing else."""
    if not isinstance(value, (bool, np.bool_)):
        raise InputError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_choice(name: str, value, choices) -> str:
    """One of ``choices`` (compared with ``==``; a non-hashable value is refused too)."""
    try:
        ok = value in choices
    except TypeError:
        ok = False
    if not ok:
        raise InputError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def x64_enabled() -> bool:
    """Whether JAX computes in 64 bits (``jax.config.update("jax_enable_x64", True)``)."""
    import jax

    return bool(jax.config.jax_enable_x64)


def default_dtype():
    """float64 when ``jax_enable_x64`` is on, else float32 (as ``jnp`` dtypes)."""
    import jax.numpy as jnp

    return jnp.float64 if x64_enabled() else jnp.float32


def check_dtype(name: str, dtype):
    """The computation dtype for ``dtype``: ``jnp.float32`` or ``jnp.float64``.

    ``None`` gives :func:`default_dtype`.  Anything but float32 and float64 is an
    :class:`InputError`.  float64 needs 64-bit JAX: without ``jax_enable_x64`` it warns
    and gives float32 (what JAX would silently compute in).
    """
    import jax.numpy as jnp

    if dtype is None:
        return default_dtype()
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = np.dtype(object)  # not a dtype at all (np.dtype(None) would be float64)
    if dt.name not in ("float32", "float64"):
        raise InputError(f"{name} must be float32 or float64, got {dtype!r}")
    if dt == np.float64 and not x64_enabled():
        warnings.warn(
            "dtype=float64 needs 64-bit JAX, which is off: computing in float32. Call "
            'jax.config.update("jax_enable_x64", True) before any JAX computation to fit '
            "in float64",
            UserWarning,
            stacklevel=4,
        )
        return jnp.float32
    return jnp.float64 if dt == np.float64 else jnp.float32


def check_matrix(X, what: str = "X") -> None:
    """Refuse non-numeric, negative, NaN or infinite input with a one-line error."""
    data = X.data if sp.issparse(X) else np.asarray(X)
    if not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
        raise InputError(f"{what} must hold real numbers, got dtype {data.dtype}")
    if data.size and not np.all(np.isfinite(data)):
        bad = int(np.sum(~np.isfinite(data)))
        raise InputError(f"{what} has {bad} NaN or infinite value(s)")
    if data.size and data.min() < 0:
        raise InputError(f"{what} has {int(np.sum(data < 0))} negative value(s); counts must be >= 0")
