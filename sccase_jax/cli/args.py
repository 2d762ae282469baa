"""The command line's arguments: flags built from :class:`sccase_jax.options.Options`.

Every option with a flag becomes one argparse argument whose default is the record's
default, whose help is the record's help (with what the default means) and whose type
runs the record's own check: a bad value ends with one ``sccase-jax: error: ...`` line
(exit status 2) when the arguments are parsed, before any file is read or written, with
the message the API would give.  Options whose default is ``None`` (decided by the preset
or the reference) are passed on only when given.
"""

from __future__ import annotations

import argparse
import dataclasses

from sccase_jax.options import Options, parse_term
from sccase_jax.validate import InputError, check_int, check_real, check_seed

__all__ = ["ArgumentParser", "add_options", "given_options", "int_at_least", "seed_type"]


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line ``sccase-jax: error: ...`` (exit status 2) for bad usage."""

    def error(self, message):
        root = self.prog.split()[0]
        self.exit(2, f"{root}: error: {message} (see '{self.prog} --help')\n")


def _number(text: str):
    """The text as an int, else a float, else itself (the check then names it)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def checked(name: str, check, parse=_number, type_name: str = "value"):
    """argparse type: ``parse`` the text, then ``check(name, value)``; an
    :class:`~sccase_jax.validate.InputError` becomes argparse's one-line error."""

    def convert(text: str):
        try:
            return check(name, parse(text))
        except InputError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = type_name
    return convert


def int_at_least(name: str, low: int = 1):
    """argparse type: an integer ``>= low``."""
    return checked(name, lambda n, v: check_int(n, v, low, integral_float=False), type_name="integer")


def seed_type(name: str = "seed"):
    """argparse type: a seed, 0 to 2**32 - 1 (what NumPy and scikit-learn accept)."""
    return checked(name, check_seed, type_name="integer")


def _term_weight(name: str, text: str) -> tuple:
    """``NAME:WEIGHT`` as ``(NAME, WEIGHT)``, the weight checked (the name is checked against
    the registry when the options are made, after any ``--term-module`` is imported)."""
    term, weight = parse_term(text)
    return term, check_real(f"the weight of term {term!r}", weight)


def _flag(f) -> str:
    return f.metadata["flag"] or "--" + f.name.replace("_", "-")


def _help(f) -> str:
    text = f.metadata["default_text"]
    if text is None:
        text = f.default if not isinstance(f.default, str) else f.default
    return f"{f.metadata['help']} (default {text})"


def add_options(parser: argparse.ArgumentParser, names) -> None:
    """Add the flags of the options ``names`` (those that have one) to ``parser``."""
    fields = {f.name: f for f in dataclasses.fields(Options)}
    for name in names:
        f = fields[name]
        if f.metadata["flag"] is None:
            continue
        flag = _flag(f)
        if f.type in ("bool", "bool | None") or isinstance(f.default, bool):
            if name == "scale_output":  # True, False or (not given) decided by the output
                parser.add_argument(f"--{name.replace('_', '-')}", dest=name, action="store_true",
                                    default=None, help=_help(f))
                parser.add_argument(f"--no-{name.replace('_', '-')}", dest=name,
                                    action="store_false", help="the opposite of --scale-output")
            else:
                parser.add_argument(flag, dest=name, action="store_true", default=f.default,
                                    help=f.metadata["help"])
            continue
        kwargs = dict(dest=name, default=f.default, help=_help(f))
        if name == "terms":  # repeatable, NAME:WEIGHT; the names are checked when Options is made
            kwargs.update(action="append", type=checked(name, _term_weight, str, "term"))
            parser.add_argument(flag, metavar=f.metadata["metavar"], **kwargs)
            continue
        if f.metadata["choices"] is not None:
            kwargs["choices"] = list(f.metadata["choices"])
        else:
            parse = f.metadata["parse"] or _number
            kwargs["type"] = checked(name, f.metadata["check"], parse, name)
        if f.metadata["metavar"]:
            kwargs["metavar"] = f.metadata["metavar"]
        parser.add_argument(flag, **kwargs)


def given_options(args, names) -> dict:
    """The options among ``names`` to pass on: every one whose value is not ``None`` (a
    ``None`` default is decided later, by the preset or the reference)."""
    return {name: getattr(args, name) for name in names
            if hasattr(args, name) and getattr(args, name) is not None}
