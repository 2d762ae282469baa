"""The ``sccase-jax`` command (also ``python -m sccase_jax``): signals first, then the CLI.

This module imports nothing but the standard library before it has made Ctrl-C safe
(:func:`exit_on_signal`); the command line itself is :mod:`sccase_jax.cli`.
"""

from __future__ import annotations

import os
import sys

__all__ = ["exit_on_signal", "run"]


def exit_on_signal() -> None:
    """Make Ctrl-C (SIGINT) and SIGTERM end the process at once, without unwinding.

    A ``KeyboardInterrupt`` raised while XLA compiles or runs, or while the interpreter
    shuts down with XLA's threads still busy, crashed the process (segmentation fault in
    2 of 4 tries), and libraries that catch every exception on import swallowed it.  So
    the signal never becomes an exception: Python's C-level handler writes its number to
    a pipe (``signal.set_wakeup_fd``) even while the main thread is inside compiled code,
    and a thread waiting on that pipe removes the temporary output files being written
    (:func:`sccase_jax.io.discard_temporaries`), prints one line and leaves with
    ``os._exit`` (status 130 for SIGINT, 143 for SIGTERM).  Only the command line
    installs this (:func:`run`), before anything else is imported; ``sccase_jax.cli.main``
    called from Python keeps the usual ``KeyboardInterrupt``.
    """
    import signal
    import threading

    lock = threading.Lock()

    def leave(signum: int) -> None:
        if not lock.acquire(blocking=False):
            return
        try:
            # No output is being written before sccase_jax.io is imported; while it is still
            # being imported (its anndata import takes a while) it has no temporaries yet.
            discard = getattr(sys.modules.get("sccase_jax.io"), "discard_temporaries", None)
            if discard is not None:
                discard()
            os.write(2, b"\nsccase-jax: interrupted\n")
        finally:
            os._exit(128 + int(signum))  # whatever happened above: the lock is taken, leave

    r, w = os.pipe()
    os.set_blocking(w, False)

    def watch() -> None:
        byte = os.read(r, 1)
        leave(byte[0] if byte else signal.SIGINT)

    threading.Thread(target=watch, name="sccase-jax-signals", daemon=True).start()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: leave(signum))
    signal.set_wakeup_fd(w, warn_on_full_buffer=False)


def run() -> None:
    """The ``sccase-jax`` console script: :func:`exit_on_signal`, then the command line."""
    exit_on_signal()
    from sccase_jax.cli import main

    sys.exit(main())


if __name__ == "__main__":
    run()
