"""Host-side progress lines for long fits: one per stage, one per iteration (with the time
left at the current pace), fed by the fit's host loop or by ``jax.debug.callback``."""

from __future__ import annotations

import sys

import numpy as np

__all__ = ["Reporter", "block_reporter", "report", "stage"]

_STATUS = {0: "", 1: "  converged", 2: "  iteration budget reached (max_iter)",
           3: "  non-finite F, stopped"}


def report(iteration, loss, rel_change, status, eta: float | None = None,
           x_change: float | None = None) -> None:
    """Print one line per iteration to stderr; vmapped fits print the batch's range.
    ``eta``: seconds left if every remaining iteration takes as long as the last ones;
    ``x_change``: the relative change of the iterate (shown when finite)."""
    it = np.atleast_1d(np.asarray(iteration))
    F = np.atleast_1d(np.asarray(loss, dtype=float))
    rel = np.atleast_1d(np.asarray(rel_change, dtype=float))
    st = np.atleast_1d(np.asarray(status))
    if it.size == 1:
        step = ("" if x_change is None or not np.isfinite(x_change)
                else f"  step = {float(x_change):.1e}")
        msg = (f"iter {int(it[0]):4d}  F = {F[0]:.6e}  rel. change = {rel[0]:.3e}{step}"
               f"{_STATUS.get(int(st[0]), '')}")
        if eta is not None and int(st[0]) == 0:
            msg += f"  (at most {eta:.0f} s left)" if eta >= 1 else ""
    else:
        msg = (
            f"iter {int(it.max()):4d}  batch of {it.size}: F in [{np.nanmin(F):.4e}, {np.nanmax(F):.4e}]"
            f"  running {int(np.sum(st == 0))}"
        )
    print(msg, file=sys.stderr, flush=True)


def stage(message: str) -> None:
    """One line on stderr for a stage before the iterations (the start can take minutes on
    large data: the K estimate, the Gram matrix, the NMF start, compiling the solver)."""
    print(message, file=sys.stderr, flush=True)


class Reporter:
    """``report(state)`` for a fit driven from the host: one line per iteration with the time
    the remaining iterations (up to ``max_iter``) take at the pace of the last one."""

    def __init__(self, max_iter: int):
        import time

        self._clock = time.perf_counter
        self.max_iter = int(max_iter)
        self.last = self._clock()

    def __call__(self, state) -> None:
        now = self._clock()
        it = int(state.iteration)
        eta = (now - self.last) * max(self.max_iter - it, 0)
        self.last = now
        report(it, float(state.loss), float(state.rel_change), int(state.status), eta,
               float(state.x_change))


def block_reporter(what: str, every: float = 10.0, enabled: bool = True):
    """``progress(done, total)`` for a loop over cell blocks (the support, the local Gram
    blocks, the enhanced layer computed or written block by block): a stage line with the
    time left at the pace so far, at most every ``every`` seconds; a short loop prints
    nothing, a long one also says when it is done.  ``enabled=False``: prints nothing."""
    import time

    t0 = time.perf_counter()
    state = {"last": t0, "shown": False}

    def show(done: int, total: int) -> None:
        now = time.perf_counter()
        if enabled and (now - state["last"] >= every or (done == total and state["shown"])):
            state["last"], state["shown"] = now, True
            left = (now - t0) * (total - done) / max(done, 1)
            stage(f"  {what}: {done} of {total} cells, {now - t0:.0f} s"
                  + (f", about {left:.0f} s left" if done < total else ""))

    return show
