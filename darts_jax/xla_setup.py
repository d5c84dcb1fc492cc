"""XLA settings darts_jax needs, applied through ``XLA_FLAGS`` before JAX starts its backends.

jaxlib 0.10.2's XLA:CPU crashes (SIGSEGV in a YNNPACK transpose) running the vmapped multi-seed search step
when it hands reductions to YNNPACK; with YNNPACK's reduce fusion off the same program runs and gives the same
numbers. The entry points (`darts_jax.cli`, the benchmarks, the tests) call `configure()` first; library users
who vmap search steps on a CPU should call it before their first JAX computation.
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
