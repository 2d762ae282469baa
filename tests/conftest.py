import os

import jax
import pytest
from hypothesis import HealthCheck, settings

# The command line caches compiled programs in ~/.cache by default: not in the tests, which
# check the cache on their own (test_speed.py) in a directory of their own.
os.environ.setdefault("SCCASE_JAX_CACHE", "off")

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

settings.register_profile(
    "dev", max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture
def key():
    return jax.random.PRNGKey(0)


@pytest.fixture(autouse=True, scope="module")
def _drop_compiled_programs():
    """Drop the compiled programs of each module after it: a long-lived pytest-xdist worker
    otherwise keeps every executable it compiled (two workers crashed inside XLA's CPU
    compiler late in full runs, at 92 % of the suite)."""
    yield
    jax.clear_caches()
