"""``sccase-jax``: a thin command line over :func:`sccase_jax.enhance`.

Subcommands: ``enhance IN OUT.h5ad`` (:mod:`~sccase_jax.cli.enhance`), ``evaluate``
(:mod:`~sccase_jax.cli.evaluate`), ``peaks`` (:mod:`~sccase_jax.cli.peaks`) and ``demo``
(:mod:`~sccase_jax.cli.demo`); the options
of ``enhance`` are built from :class:`sccase_jax.options.Options`
(:mod:`~sccase_jax.cli.args`).  Bad input or usage ends with a one-line
``sccase-jax: error: ...`` and exit status 2, never a traceback; option values are
checked when the arguments are parsed, before any file is read or written.  The
``sccase-jax`` script itself is :func:`sccase_jax.__main__.run` (Ctrl-C ends it at once).
Nothing here imports JAX until a command runs.
"""

from __future__ import annotations

import sys

from sccase_jax.cli import demo, enhance, evaluate, peaks
from sccase_jax.cli.args import ArgumentParser
from sccase_jax.validate import InputError

__all__ = ["CLIError", "build_parser", "main", "write_h5ad_atomic"]

DESCRIPTION = ("sccase-jax: enhance scATAC-seq counts (.h5ad, Cell Ranger .h5 or matrix folder, "
               "fragments + peaks, .h5mu) with scCASE, a thin command line "
               "over sccase_jax.enhance. Run 'sccase-jax COMMAND --help' for the options of "
               "each command.")


class CLIError(InputError):
    """A user-facing error of the command line: printed as one line."""


def write_h5ad_atomic(adata, out: str) -> None:
    """Write to a temporary file beside ``out`` and rename: no partial file is left.

    :func:`sccase_jax.io.write_h5ad_atomic`, with its errors as :class:`CLIError`.
    """
    from sccase_jax import io

    try:
        io.write_h5ad_atomic(adata, out)
    except io.OutputError as exc:
        raise CLIError(str(exc)) from None


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="sccase-jax", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    enhance.add_parser(sub)
    demo.add_parser(sub)
    evaluate.add_parser(sub)
    peaks.add_parser(sub)
    return parser


def main(argv=None) -> int:
    """Parse ``argv`` and run the command; returns the exit status (2 for a user error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # bad usage (one line printed) or --help: return the status
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    from sccase_jax.jaxconfig import enable_compilation_cache

    enable_compilation_cache()  # $SCCASE_JAX_CACHE, else ~/.cache/sccase_jax/xla; "off" disables
    try:
        return int(args.func(args) or 0)
    except InputError as exc:
        print(f"sccase-jax: error: {exc}", file=sys.stderr)
        return 2
    except MemoryError:
        print("sccase-jax: error: out of memory; try fewer cells or x_format='sparse'", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sccase-jax: interrupted", file=sys.stderr)
        return 130
