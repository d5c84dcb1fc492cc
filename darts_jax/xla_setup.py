"""XLA settings for darts_jax: a per-program crash workaround and the persistent compile cache of the entry points.

jaxlib 0.10.2's XLA:CPU crashes (SIGSEGV in a YNNPACK transpose) running the vmapped multi-seed search step
when it hands reductions to YNNPACK. `cpu_compiler_options_without_ynn_reduce` is what
`steps.make_multi_seed_step` compiles that program with on a CPU: YNNPACK for dots only. It is not applied
globally, because XLA's own reductions are less accurate on these programs: with them everywhere, the
first-order α-gradient on the reference fixture drifts from 2e-5 to 6e-3 relative error.

`enable_compilation_cache` keeps compiled search and eval steps on disk, so a second seed, a resumed run or a
re-run of the same configuration skips XLA compilation (minutes for a paper-sized supernet on a CPU).
"""
from __future__ import annotations

import os
from typing import Dict, Optional

YNN_DOTS_ONLY = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}


def cpu_compiler_options_without_ynn_reduce() -> Optional[Dict[str, str]]:
  """`jax.jit(..., compiler_options=...)` that keep YNNPACK away from reductions on a CPU backend, else None."""
  import jax  # pylint: disable=g-import-not-at-top
  return dict(YNN_DOTS_ONLY) if jax.default_backend() == "cpu" else None


def default_cache_dir() -> str:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
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
