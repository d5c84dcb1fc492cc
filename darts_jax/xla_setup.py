"""XLA settings for darts_jax's entry points: a crash workaround in ``XLA_FLAGS`` and a persistent compile cache.

jaxlib 0.10.2's XLA:CPU crashes (SIGSEGV in a YNNPACK transpose) running the vmapped multi-seed search step
when it hands reductions to YNNPACK; with YNNPACK's reduce fusion off the same program runs and gives the same
numbers. The entry points (`darts_jax.cli`, the benchmarks, the tests) call `configure()` first; library users
who vmap search steps on a CPU should call it before their first JAX computation.

`enable_compilation_cache` keeps compiled search and eval steps on disk, so a second seed, a resumed run or a
re-run of the same configuration skips XLA compilation (minutes for a paper-sized supernet on a CPU).
"""
from __future__ import annotations

import os

WORKAROUND_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-reduce",)


def configure(environ=None) -> str:
  """Adds `WORKAROUND_FLAGS` to ``XLA_FLAGS`` (keeping the user's flags, never overriding one they set);
  returns the resulting value. Has no effect on a backend that is already running."""
  environ = os.environ if environ is None else environ
  flags = environ.get("XLA_FLAGS", "").split()
  for flag in WORKAROUND_FLAGS:
    name = flag.split("=", 1)[0]
    if not any(f.split("=", 1)[0] == name for f in flags):
      flags.append(flag)
  environ["XLA_FLAGS"] = " ".join(flags)
  return environ["XLA_FLAGS"]


def default_cache_dir(environ=None) -> str:
  environ = os.environ if environ is None else environ
  base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "darts_jax", "jit")


def enable_compilation_cache(directory: str | None = None) -> str:
  """Turns on JAX's persistent compilation cache in `directory` (default: ``$XDG_CACHE_HOME/darts_jax/jit``)
  unless one is already configured (e.g. by ``JAX_COMPILATION_CACHE_DIR``); returns the directory in use.
  ``DARTS_JAX_NO_COMPILE_CACHE=1`` leaves the cache off."""
  import jax  # pylint: disable=g-import-not-at-top
  current = jax.config.jax_compilation_cache_dir
  if current or os.environ.get("DARTS_JAX_NO_COMPILE_CACHE"):
    return current or ""
  directory = directory or default_cache_dir()
  os.makedirs(directory, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", directory)
  return directory

