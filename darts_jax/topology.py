"""Cell topology: the candidate ops of the built-in spaces, a cell's nodes and edges, and their order.

The lowest layer of the spaces: genotypes, NAS-Bench-201 architectures and the models read a cell's shape from
a `Topology`, and `darts_jax.search_space` adds to it what a space does (derive, sample, write, draw).

Edge order is the reference's: node 0's incoming edges first (from the cell inputs), then node 1's, and so on;
within a node, edges are ordered by source state index. States are numbered cell inputs first
(``0 .. num_inputs-1``), then intermediate nodes (``num_inputs .. num_inputs+num_nodes-1``).
"""
from __future__ import annotations

import dataclasses
from typing import Tuple

DARTS_PRIMITIVES = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)

NB201_PRIMITIVES = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")


@dataclasses.dataclass(frozen=True)
class Edge:
  """A directed edge from state `src` to state `dst` (state numbering as in the module docstring)."""
  src: int
  dst: int


@dataclasses.dataclass(frozen=True)
class Topology:
  """The cell of a search space: its candidate ops and its DAG.

  Attributes:
    name: short identifier (e.g. "darts", "nb201").
    primitives: candidate operation names, in the order of α's last axis.
    num_inputs: number of cell inputs (2 in DARTS: the two previous cells; 1 in NAS-Bench-201).
    num_nodes: number of intermediate nodes.
    inputs_per_node: edges each node keeps when discretized (2 in DARTS; None means every edge is kept,
      with exactly one op each, as in NAS-Bench-201).
    output: "concat" (concatenate the intermediate nodes, DARTS) or "last" (the last node, NAS-Bench-201).
    pool_batch_norm: whether the search cell's pooling ops end in a non-affine BatchNorm (DARTS' `MixedOp`
      does; NAS-Bench-201's search cell, whose table the benchmark's accuracies come from, does not).
  """
  name: str
  primitives: Tuple[str, ...]
  num_inputs: int
  num_nodes: int
  inputs_per_node: int | None = 2
  output: str = "concat"
  pool_batch_norm: bool = True

  @property
  def edges(self) -> Tuple[Edge, ...]:
    return tuple(Edge(src, self.num_inputs + i)
                 for i in range(self.num_nodes)
                 for src in range(self.num_inputs + i))

  @property
  def num_edges(self) -> int:
    return len(self.edges)

  @property
  def num_ops(self) -> int:
    return len(self.primitives)

  @property
  def alpha_shape(self) -> Tuple[int, int]:
    return (self.num_edges, self.num_ops)

  def edge_index(self, src: int, dst: int) -> int:
    for i, e in enumerate(self.edges):
      if e.src == src and e.dst == dst:
        return i
    raise ValueError(f"search space {self.name!r} has no edge {src}->{dst}")

  def primitive_index(self, name: str) -> int:
    try:
      return self.primitives.index(name)
    except ValueError:
      raise ValueError(f"unknown primitive {name!r} for search space {self.name!r}; "
                       f"choose one of {', '.join(self.primitives)}") from None


NB201_CELL = Topology(name="nb201", primitives=NB201_PRIMITIVES, num_inputs=1, num_nodes=3, inputs_per_node=None,
                      output="last", pool_batch_norm=False)
