"""Installs darts_jax, differentiable architecture search in JAX."""
import setuptools

with open("requirements.txt") as f:
  install_requires = [l.strip() for l in f if l.strip() and not l.startswith("#")
                      and not l.startswith("pytest")]

setuptools.setup(
    name="darts_jax",
    version="0.1.0",
    description="Differentiable neural architecture search (DARTS and descendants) in JAX.",
    packages=setuptools.find_packages(include=["darts_jax", "darts_jax.*"]),
    python_requires=">=3.10",
    install_requires=install_requires,
    extras_require={"test": ["pytest", "pytest-xdist"]},
)
