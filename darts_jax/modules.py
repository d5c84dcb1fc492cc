"""Flax NNX modules for users' own Flax/optax code: where to find each, and the search network with α.

* `Network` (`networks.from_genotype`) and `NB201Network` (`nb201.from_arch`): final networks whose children
  compute them (``model.cells[i]`` a `Cell`, ``model.cells[i].ops[e]`` a `layers.Op`); defined in
  `darts_jax.networks` and `darts_jax.nb201`, where the functional `apply` runs these same modules.
* `Op`, `Alpha` and `register_op` (`darts_jax.layers`): a candidate operation as a layer, α's variable type,
  and a candidate operation defined as an NNX module.
* `SupernetModule`: the DARTS search network with its weights as ``nnx.Param`` and α as `Alpha`;
  `search_state` splits it once into the pure `bilevel.SearchState` the jitted steps run on, and
  `update_from_state` writes a state back. The jitted search steps stay functions of explicit pytrees, so
  they compile and run as they do without NNX.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import jax
from flax import nnx

from darts_jax import bilevel, layers, supernet
from darts_jax.layers import Alpha, Op, register_op
from darts_jax.nb201 import Network as NB201Network
from darts_jax.networks import Cell, Network

__all__ = ["Alpha", "Op", "register_op", "Cell", "Network", "NB201Network", "SupernetModule", "search_state",
           "update_from_state"]

Params = Dict[str, Any]


class SupernetModule(nnx.Module):
  """The DARTS search network (`supernet.SupernetConfig`) with its weights as ``nnx.Param`` and α as
  `Alpha`. ``model(x)`` runs it on softmax(α) (or on given op weights: ``model(x, op_weights)``)."""

  def __init__(self, cfg, *, rngs: nnx.Rngs, init_alphas: Optional[Callable[[jax.Array], Params]] = None):
    self.cfg = cfg
    self.weights = layers.Tree(supernet.init(rngs.params(), cfg), nnx.Param)
    alphas = (init_alphas or (lambda k: cfg.space.init_alphas(k)))(rngs.params())
    self.alphas = layers.Tree(alphas, Alpha)

  def __call__(self, x: jax.Array, op_weights: Optional[Params] = None) -> jax.Array:
    weights = op_weights if op_weights is not None else supernet.softmax_weights(self.alphas.value())
    return supernet.apply(self.weights.value(), x, weights, self.cfg)


def search_state(model: SupernetModule, hp, rng: jax.Array):
  """The `bilevel.SearchState` of a `SupernetModule` (its weights and α as plain pytrees, fresh optimizer states)."""
  return bilevel.init_state(model.weights.value(), model.alphas.value(), hp, rng)


def update_from_state(model: SupernetModule, state) -> None:
  """Writes a `bilevel.SearchState`'s weights and α back into `model`."""
  model.weights.assign(state.params)
  model.alphas.assign(state.alphas)
