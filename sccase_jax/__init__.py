"""sccase_jax: scCASE enhancement of scATAC-seq count matrices in JAX.

The names below are loaded on first use (PEP 562), so that ``import sccase_jax`` and the
command line's start-up do not import JAX, anndata and scipy until they are needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# name -> module that defines it
_EXPORTS = {
    "InputError": "validate",
    "Options": "options",
    "Data": "params",
    "Factors": "params",
    "Hyperparams": "params",
    "SolverConfig": "params",
    "release_config": "params",
    "FitResult": "result",
    "Status": "result",
    "preprocess": "preprocessing",
    "fit": "fitting",
    "fit_variant": "fitting",
    "sweep": "sweeps",
    "OBJECTIVES": "objectives",
    "register_objective": "objectives",
    "estimate_n_components": "estimate",
    "enhance": "tl",
    "read": "readers",
    "write_enhanced_h5ad": "io",
    "enable_compilation_cache": "jaxconfig",
    "evaluate_clustering": "evaluation.clustering",
    "run_recovery": "evaluation.recovery",
}
_SUBMODULES = ("datasets", "evaluation", "implicit", "io", "objectives", "ops", "options",
               "output", "readers", "reference", "sharding", "solver", "tl")

__all__ = sorted([*_EXPORTS, *_SUBMODULES])


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"sccase_jax.{_EXPORTS[name]}"), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"sccase_jax.{name}")
    else:
        raise AttributeError(f"module 'sccase_jax' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from sccase_jax import (  # noqa: F401
        datasets,
        evaluation,
        implicit,
        io,
        objectives,
        ops,
        options,
        output,
        readers,
        reference,
        sharding,
        solver,
        tl,
    )
    from sccase_jax.estimate import estimate_n_components  # noqa: F401
    from sccase_jax.evaluation.clustering import evaluate_clustering  # noqa: F401
    from sccase_jax.evaluation.recovery import run_recovery  # noqa: F401
    from sccase_jax.fitting import fit, fit_variant  # noqa: F401
    from sccase_jax.io import write_enhanced_h5ad  # noqa: F401
    from sccase_jax.jaxconfig import enable_compilation_cache  # noqa: F401
    from sccase_jax.objectives import OBJECTIVES, register_objective  # noqa: F401
    from sccase_jax.options import Options  # noqa: F401
    from sccase_jax.params import Data, Factors, Hyperparams, SolverConfig, release_config  # noqa: F401
    from sccase_jax.preprocessing import preprocess  # noqa: F401
    from sccase_jax.readers import read  # noqa: F401
    from sccase_jax.result import FitResult, Status  # noqa: F401
    from sccase_jax.sweeps import sweep  # noqa: F401
    from sccase_jax.tl import enhance  # noqa: F401
    from sccase_jax.validate import InputError  # noqa: F401
