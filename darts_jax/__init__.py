"""darts_jax: differentiable neural architecture search (DARTS and its descendants) in JAX."""

__version__ = "0.1.0"
