"""sccase_jax: scCASE enhancement of scATAC-seq count matrices in JAX."""

from sccase_jax import datasets as datasets
from sccase_jax import ops as ops
from sccase_jax import reference as reference
from sccase_jax import sharding as sharding
from sccase_jax.api import FitResult as FitResult
from sccase_jax.api import InputError as InputError
from sccase_jax.api import fit as fit
from sccase_jax.clustering import evaluate_clustering as evaluate_clustering
from sccase_jax.estimate import estimate_n_components as estimate_n_components
from sccase_jax.io import write_enhanced_h5ad as write_enhanced_h5ad
from sccase_jax.params import Data as Data
from sccase_jax.params import Factors as Factors
from sccase_jax.params import Hyperparams as Hyperparams
from sccase_jax.params import SolverConfig as SolverConfig
from sccase_jax.params import release_config as release_config
from sccase_jax.recovery import run_recovery as run_recovery
from sccase_jax.sweeps import SweepResult as SweepResult
from sccase_jax.sweeps import sweep as sweep
from sccase_jax.tl import enhance as enhance
from sccase_jax.variants import OBJECTIVES as OBJECTIVES
from sccase_jax.variants import fit_variant as fit_variant
from sccase_jax.variants import register_objective as register_objective

__version__ = "0.1.0"

__all__ = [
    "OBJECTIVES",
    "Data",
    "Factors",
    "FitResult",
    "Hyperparams",
    "InputError",
    "SolverConfig",
    "SweepResult",
    "datasets",
    "enhance",
    "estimate_n_components",
    "evaluate_clustering",
    "fit",
    "fit_variant",
    "ops",
    "reference",
    "register_objective",
    "release_config",
    "run_recovery",
    "sharding",
    "sweep",
    "write_enhanced_h5ad",
]
