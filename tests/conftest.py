"""Test-session settings: fast XLA compilation, a persistent compile cache, and the shared fixture folders.

Tests are dominated by XLA compile time on CPU, so the backend optimization level is lowered (the programs
are tiny; run time barely matters) and compiled programs are cached on disk across test processes.
"""
import os
import pathlib
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top

_CACHE = os.environ.get("DARTS_JAX_TEST_CACHE", os.path.join(tempfile.gettempdir(), "darts_jax_jit"))
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)   # for the entry points run as subprocesses
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"


# End-to-end tests (subprocesses, whole searches) run for minutes each: started first, they overlap the many
# short tests on the other worker instead of running alone at the end (pytest-xdist hands tests out in order).
_LONG_FIRST = ("test_search_e2e.py", "test_retrain.py", "test_parallel.py")


def pytest_collection_modifyitems(config, items):
  del config
  items.sort(key=lambda item: item.path.name not in _LONG_FIRST)


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: minutes of XLA compilation; run with -m slow (CI runs them)")
  config.addinivalue_line("markers", "alone: needs about half the machine's 24 GB; CI runs these one at a time, "
                          "after the parallel runs (beside another heavy test it was killed for memory)")


def _shared_file(env: str, sub: str, name: str) -> pathlib.Path:
  root = pathlib.Path(os.environ[env]) if os.environ.get(env) else SHARED / sub
  path = root / name
  if not path.is_file():
    if os.environ.get("CI"):
      pytest.fail(f"{path} is missing: CI must provide ../shared/{sub}/ (or set {env})")
    pytest.skip(f"{path} is not available here (set {env})")
  return path


@pytest.fixture
def reference_file():
  """`reference_file(name)`: a file of ../shared/reference/; fails in CI and skips elsewhere when missing."""
  return lambda name: _shared_file("DARTS_JAX_REFERENCE_DIR", "reference", name)
