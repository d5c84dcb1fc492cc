"""Pictures of DARTS cells and of architecture weights over a search, drawn with matplotlib alone.

`plot_cell` / `plot_genotype` draw cells in the style of the reference's graphviz ``visualize.py`` (inputs
c_{k-2}, c_{k-1} on the left, intermediate nodes in the middle, output c_{k} on the right, one labelled arrow per
edge) but lay them out by hand, so no graphviz is needed. `plot_alpha_history` draws, per edge, each op's weight
over epochs; `plot_eigenvalues` the α Hessian's largest eigenvalue over epochs. Every function writes a PNG and
an SVG and returns their paths. matplotlib is imported inside the functions and only its object-oriented API
(no pyplot, no backend switch) is used, so importing this module is cheap and has no global side effects.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from darts_jax import nb201_arch
from darts_jax.genotypes import Genotype, canonical, cell_edges, cell_nodes, is_sparse
from darts_jax.topology import NB201_CELL

_FORMATS = ("png", "svg")
_DPI = 150

OP_COLORS = {
    "none": "#9e9e9e",
    "max_pool_3x3": "#1f77b4",
    "avg_pool_3x3": "#0e9aa7",
    "skip_connect": "#2ca02c",
    "sep_conv_3x3": "#d62728",
    "sep_conv_5x5": "#ff7f0e",
    "dil_conv_3x3": "#9467bd",
    "dil_conv_5x5": "#d6339a",
    "sep_conv_7x7": "#8c564b",
    "conv_7x1_1x7": "#7f7f00",
    "nor_conv_1x1": "#9467bd",
    "nor_conv_3x3": "#d62728",
}
_FALLBACK_COLORS = ("#37474f", "#827717", "#4e342e", "#283593", "#00695c", "#bf360c")

_IN_COLOR, _NODE_COLOR, _OUT_COLOR = "#b4eeb4", "#add8e6", "#eee8aa"

# Cell layout, in data units (drawn at _INCH inches per unit, equal aspect).
_INCH = 0.78
_NODE_W, _NODE_H = 0.8, 0.5
_DX = 2.1
_DY = 1.0
_IN_Y = 1.2
_LABEL_FONT = 7.5
_CHAR_W = 0.62 * _LABEL_FONT / 72 / _INCH
_LABEL_H = 1.9 * _LABEL_FONT / 72 / _INCH


def _op_color(op: str) -> str:
  if op in OP_COLORS:
    return OP_COLORS[op]
  return _FALLBACK_COLORS[sum(map(ord, op)) % len(_FALLBACK_COLORS)]


def _paths(path_without_ext: str | os.PathLike) -> list[str]:
  base = Path(path_without_ext)
  if base.suffix.lower() in (".png", ".svg", ".pdf"):
    base = base.with_suffix("")
  base.parent.mkdir(parents=True, exist_ok=True)
  return [f"{base}.{ext}" for ext in _FORMATS]


def _save(fig: Any, path_without_ext: str | os.PathLike) -> list[str]:
  paths = _paths(path_without_ext)
  for p in paths:
    kwargs = {"metadata": {"Date": None}} if p.endswith(".svg") else {}
    fig.savefig(p, dpi=_DPI, facecolor="white", **kwargs)
  return paths


def _state_label(j: int) -> str:
  return {0: r"$c_{k-2}$", 1: r"$c_{k-1}$"}.get(j, str(j - 2))


class _Box:
  """Axis-aligned rectangle (center, half sizes) in data units."""

  def __init__(self, x: float, y: float, hw: float, hh: float):
    self.x, self.y, self.hw, self.hh = x, y, hw, hh

  def contains(self, pts: np.ndarray, margin: float = 0.0) -> np.ndarray:
    return ((np.abs(pts[:, 0] - self.x) <= self.hw + margin) & (np.abs(pts[:, 1] - self.y) <= self.hh + margin))

  def overlap(self, other: "_Box") -> float:
    ox = min(self.x + self.hw, other.x + other.hw) - max(self.x - self.hw, other.x - other.hw)
    oy = min(self.y + self.hh, other.y + other.hh) - max(self.y - self.hh, other.y - other.hh)
    return max(ox, 0.0) * max(oy, 0.0)


def _bezier(p0: np.ndarray, c: np.ndarray, p2: np.ndarray, t: np.ndarray) -> np.ndarray:
  t = np.asarray(t, dtype=np.float64)[..., None]
  return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * c + t ** 2 * p2


def _sub_bezier(p0: np.ndarray, c: np.ndarray, p2: np.ndarray, t0: float, t1: float) -> np.ndarray:
  q0 = _bezier(p0, c, p2, t0)
  q2 = _bezier(p0, c, p2, t1)
  deriv = 2 * ((1 - t0) * (c - p0) + t0 * (p2 - c))
  return np.stack([q0, q0 + (t1 - t0) / 2 * deriv, q2])


class _Router:
  """Chooses, edge by edge, a curvature and label position that keep clear of boxes, labels and other edges."""

  _RADS = (0.0, 0.12, -0.12, 0.24, -0.24, 0.36, -0.36, 0.5, -0.5, 0.65, -0.65)
  _LABEL_TS = (0.5, 0.42, 0.58, 0.34, 0.66)
  _T = np.linspace(0.0, 1.0, 81)

  def __init__(self, boxes: dict[int, _Box], frame: tuple[float, float, float, float]):
    self.boxes = boxes
    self.frame = frame
    self.curves: list[np.ndarray] = []
    self.labels: list[_Box] = []

  def route(self, src: int, dst: int, label: str | None) -> tuple[np.ndarray, tuple[float, float] | None]:
    a, b = self.boxes[src], self.boxes[dst]
    p0, p2 = np.array([a.x, a.y]), np.array([b.x, b.y])
    d = p2 - p0
    best = None
    for rad in self._RADS:
      c = (p0 + p2) / 2 + rad * np.array([d[1], -d[0]])
      pts = _bezier(p0, c, p2, self._T)
      outside = ~(a.contains(pts, 0.03) | b.contains(pts, 0.03))
      if not outside.any():
        continue
      idx = np.flatnonzero(outside)
      t0, t1 = self._T[idx[0]], self._T[idx[-1]]
      vis = pts[idx[0]:idx[-1] + 1]
      cost = 0.8 * abs(rad)
      x0, x1, y0, y1 = self.frame
      cost += 20.0 * ((vis[:, 0] < x0) | (vis[:, 0] > x1) | (vis[:, 1] < y0) | (vis[:, 1] > y1)).mean()
      for k, box in self.boxes.items():
        if k not in (src, dst):
          cost += 100.0 * box.contains(vis, 0.12).mean() + 30.0 * box.contains(vis, 0.12).any()
      for other in self.curves:
        dist = np.min(np.linalg.norm(vis[:, None, :] - other[None, ::2, :], axis=-1), axis=1)
        cost += 6.0 * (dist < 0.12).mean()
      label_at = None
      if label is not None:
        best_label = None
        for lt in self._LABEL_TS:
          pos = _bezier(p0, c, p2, t0 + lt * (t1 - t0))
          lbox = _Box(pos[0], pos[1], (len(label) * _CHAR_W) / 2 + 0.06, _LABEL_H / 2)
          lcost = 0.5 * abs(lt - 0.5)
          for box in self.boxes.values():
            lcost += 40.0 * lbox.overlap(box) / (4 * lbox.hw * lbox.hh) + 10.0 * (lbox.overlap(box) > 0)
          for other in self.labels:
            lcost += 60.0 * lbox.overlap(other) / (4 * lbox.hw * lbox.hh) + 15.0 * (lbox.overlap(other) > 0)
          for other in self.curves:
            lcost += 2.0 * lbox.contains(other, 0.02).any()
          if best_label is None or lcost < best_label[0]:
            best_label = (lcost, (float(pos[0]), float(pos[1])), lbox)
        cost += best_label[0]
        label_at = best_label
      if best is None or cost < best[0]:
        best = (cost, _sub_bezier(p0, c, p2, t0, t1), vis, label_at)
    _, ctrl, vis, label_at = best
    self.curves.append(vis)
    if label_at is None:
      return ctrl, None
    self.labels.append(label_at[2])
    return ctrl, label_at[1]


def _layout(steps: int) -> dict[int, _Box]:
  """Inputs on the left, intermediate nodes on a descending diagonal, output on the right.

  On a diagonal, straight input->node and node->output lines never cross another node; only node->node
  edges that skip a node need to bend, which the router does.
  """
  top = (steps - 1) / 2 * _DY
  boxes = {0: _Box(0.0, _IN_Y, _NODE_W / 2 + 0.08, _NODE_H / 2),
           1: _Box(0.0, -_IN_Y, _NODE_W / 2 + 0.08, _NODE_H / 2)}
  for i in range(steps):
    boxes[i + 2] = _Box(_DX * (i + 1), top - i * _DY, _NODE_W / 2 - 0.1, _NODE_H / 2)
  boxes[-1] = _Box(_DX * (steps + 1), 0.0, _NODE_W / 2, _NODE_H / 2)
  return boxes


class _CellPlan(NamedTuple):
  boxes: dict[int, _Box]
  arrows: list[tuple[np.ndarray, str, str | None, tuple[float, float] | None]]
  bounds: tuple[float, float, float, float]


def _plan_cell(edges: Sequence[tuple[str, int, int]], concat: Sequence[int], steps: int) -> _CellPlan:
  """Routes a cell's ``(op, node, input)`` edges and its output's `concat`; nodes without edges are left out."""
  boxes = _layout(steps)
  for e, (op, node, j) in enumerate(edges):
    if node not in boxes or node < 2 or j not in boxes or j == -1 or j >= node:
      raise ValueError(f"edge {e} ({op!r}, {node}, {j}) takes input {j}, which node {node - 2} cannot have")
  used = {0, 1, -1} | {node for _, node, _ in edges} | set(concat)
  boxes = {k: b for k, b in boxes.items() if k in used}
  xs = [b.x for b in boxes.values()]
  ys = [b.y for b in boxes.values()]
  frame = (min(xs) - 0.6, max(xs) + 0.6, min(ys) - 1.0, max(ys) + 1.0)
  router = _Router(boxes, frame)
  edges = [(j, node, op) for op, node, j in edges]
  outs = [(j, -1, None) for j in concat if j in boxes and j != -1]

  def length(edge: tuple[int, int, str | None]) -> float:
    return abs(boxes[edge[1]].x - boxes[edge[0]].x) + abs(boxes[edge[1]].y - boxes[edge[0]].y)

  arrows = []
  for src, dst, op in sorted(outs, key=length) + sorted(edges, key=length):
    ctrl, label_pos = router.route(src, dst, op)
    arrows.append((ctrl, "#616161" if op is None else _op_color(op), op, label_pos))
  return _CellPlan(boxes, arrows, _bounds(router, boxes))


def _bounds(router: "_Router", boxes: dict[int, _Box]) -> tuple[float, float, float, float]:
  """(x0, x1, y0, y1) around every routed curve, node box and label, with a margin."""
  pts = np.concatenate(router.curves + [np.array([[b.x - b.hw, b.y - b.hh], [b.x + b.hw, b.y + b.hh]])
                                        for b in list(boxes.values()) + router.labels])
  lo, hi = pts.min(axis=0) - 0.25, pts.max(axis=0) + 0.25
  return (float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1]))


def _draw_cell(ax: Any, plan: _CellPlan, title: str, node_text: Any = None, node_face: Any = None) -> None:
  from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
  from matplotlib.path import Path as MplPath

  for ctrl, color, op, label_pos in plan.arrows:
    path = MplPath(ctrl, [MplPath.MOVETO, MplPath.CURVE3, MplPath.CURVE3])
    ax.add_patch(FancyArrowPatch(path=path, arrowstyle="-|>", mutation_scale=11, color=color,
                                 linewidth=1.3 if op is not None else 1.0, zorder=2))
    if label_pos is not None:
      ax.text(*label_pos, op, fontsize=_LABEL_FONT, color=color, ha="center", va="center", zorder=4,
              bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor="none", alpha=0.85))
  for k, box in plan.boxes.items():
    face = (node_face(k) if node_face else
            _OUT_COLOR if k == -1 else _IN_COLOR if k < 2 else _NODE_COLOR)
    text = node_text(k) if node_text else r"$c_{k}$" if k == -1 else _state_label(k)
    ax.add_patch(FancyBboxPatch((box.x - box.hw, box.y - box.hh), 2 * box.hw, 2 * box.hh,
                                boxstyle="round,pad=0.0,rounding_size=0.1", facecolor=face,
                                edgecolor="#424242", linewidth=1.0, zorder=3))
    ax.text(box.x, box.y, text, fontsize=11, ha="center", va="center", zorder=5)
  x0, x1, y0, y1 = plan.bounds
  ax.set_xlim(x0, x1)
  ax.set_ylim(y0, y1)
  ax.set_aspect("equal")
  ax.axis("off")
  ax.text(0.01, 1.0, title, transform=ax.transAxes, fontsize=10, ha="left", va="bottom")


def _render(plan: _CellPlan, title: str, path_without_ext: str | os.PathLike, **draw_kwargs) -> list[str]:
  """A figure sized to `plan` (drawing units at _INCH inches) with a title line, saved as PNG and SVG."""
  from matplotlib.figure import Figure

  x0, x1, y0, y1 = plan.bounds
  title_h = 0.3
  fig = Figure(figsize=((x1 - x0) * _INCH, (y1 - y0) * _INCH + title_h))
  ax = fig.add_axes((0.0, 0.0, 1.0, 1.0 - title_h / ((y1 - y0) * _INCH + title_h)))
  _draw_cell(ax, plan, title, **draw_kwargs)
  return _save(fig, path_without_ext)


def plot_cell(genotype: Genotype, which: str, path_without_ext: str | os.PathLike) -> list[str]:
  """Draws the `which` ('normal' or 'reduce') cell of `genotype` to ``<path>.png`` and ``<path>.svg``.

  Returns:
    The written paths.
  """
  if which not in ("normal", "reduce"):
    raise ValueError(f"which must be 'normal' or 'reduce', got {which!r}")
  g = canonical(genotype)
  ops = getattr(g, which)
  steps = g.steps if is_sparse(g) else len(ops) // 2 + len(ops) % 2
  return _render(_plan_cell(cell_edges(g, which), cell_nodes(g, which), steps), f"{which} cell", path_without_ext)


def plot_genotype(genotype: Genotype, path_prefix: str | os.PathLike) -> list[str]:
  """Draws both cells to ``<prefix>_normal.{png,svg}`` and ``<prefix>_reduce.{png,svg}``; returns the paths."""
  prefix = str(path_prefix)
  return (plot_cell(genotype, "normal", f"{prefix}_normal")
          + plot_cell(genotype, "reduce", f"{prefix}_reduce"))


def plot_nb201(arch: Any, path_without_ext: str | os.PathLike) -> list[str]:
  """Draws a NAS-Bench-201 cell (an arch string like ``|nor_conv_3x3~0|+|...|`` or a tuple of 6 ops in the
  space's edge order) to ``<path>.png`` and ``<path>.svg``: node 0 is the cell input, node 3 its output, and
  every edge i -> j carries its op (``none`` edges are drawn grey). Returns the written paths."""

  ops = nb201_arch.parse_arch(arch) if isinstance(arch, str) else tuple(arch)
  if len(ops) != len(NB201_CELL.edges):
    raise ValueError(f"an NB201 cell has {len(NB201_CELL.edges)} edges, got {len(ops)} ops")
  boxes = {k: _Box(_DX * k, (1.5 - k) * _DY, _NODE_W / 2, _NODE_H / 2) for k in range(4)}
  xs, ys = [b.x for b in boxes.values()], [b.y for b in boxes.values()]
  router = _Router(boxes, (min(xs) - 0.6, max(xs) + 0.6, min(ys) - 1.0, max(ys) + 1.0))
  edges = sorted(((e.src, e.dst, op) for e, op in zip(NB201_CELL.edges, ops)),
                 key=lambda e: e[1] - e[0])
  arrows = []
  for src, dst, op in edges:
    ctrl, label_pos = router.route(src, dst, op)
    arrows.append((ctrl, _op_color(op), op, label_pos))
  plan = _CellPlan(boxes, arrows, _bounds(router, boxes))
  return _render(plan, "NAS-Bench-201 cell", path_without_ext,
                 node_text=lambda k: {0: "in", 3: "out"}.get(k, str(k)),
                 node_face=lambda k: _IN_COLOR if k == 0 else _OUT_COLOR if k == 3 else _NODE_COLOR)


def plot_single_edge(op: str, path_without_ext: str | os.PathLike) -> list[str]:
  """Draws the single-edge space's architecture, the image through `op` to the head, to ``<path>.png`` and
  ``<path>.svg``. Returns the written paths."""
  boxes = {k: _Box(_DX * k, 0.0, _NODE_W / 2, _NODE_H / 2) for k in range(2)}
  router = _Router(boxes, (-0.6, _DX + 0.6, -1.0, 1.0))
  ctrl, label_pos = router.route(0, 1, op)
  plan = _CellPlan(boxes, [(ctrl, _op_color(op), op, label_pos)], _bounds(router, boxes))
  return _render(plan, "single-edge architecture", path_without_ext,
                 node_text=lambda k: ("image", "head")[k],
                 node_face=lambda k: _IN_COLOR if k == 0 else _OUT_COLOR)


def _darts_steps(num_edges: int) -> int | None:
  steps, total = 0, 0
  while total < num_edges:
    total += 2 + steps
    steps += 1
  return steps if total == num_edges else None


def _as_history(history: Any, num_ops: int, name: str) -> np.ndarray:
  if hasattr(history, "shape"):
    h = np.asarray(history, dtype=np.float64)
  else:
    arrays = [np.asarray(w, dtype=np.float64) for w in history]
    if any(a.shape != arrays[0].shape for a in arrays):
      raise ValueError(f"{name}: weight arrays differ in shape: {sorted({a.shape for a in arrays})}")
    h = np.stack(arrays) if arrays else np.zeros((0, 0, num_ops))
  if h.ndim != 3 or h.shape[0] == 0 or h.shape[1] == 0 or h.shape[2] != num_ops:
    raise ValueError(f"{name}: expected a non-empty list of (num_edges, {num_ops}) weight arrays, got shape "
                     f"{h.shape}")
  return h


def plot_alpha_history(history: Sequence[Any] | Mapping[str, Sequence[Any]], primitives: Sequence[str],
                       path_without_ext: str | os.PathLike) -> list[str]:
  """Plots each op's weight over epochs, one small panel per edge, to PNG and SVG.

  Args:
    history: per-epoch op weights, each of shape (num_edges, len(primitives)) (or one array of shape
      (epochs, num_edges, num_ops)); or a dict of those, e.g. ``{"normal": [...], "reduce": [...]}``, drawn as
      stacked blocks. DARTS-shaped edge sets (2, 3, 4, ... edges per node) are arranged one row per node.
    primitives: op names of the last axis.
    path_without_ext: output path without extension.

  Returns:
    The written paths.
  """
  from matplotlib.figure import Figure
  from matplotlib.lines import Line2D

  blocks = dict(history) if isinstance(history, Mapping) else {"": history}
  if not blocks:
    raise ValueError("history is empty")
  arrays = {k: _as_history(v, len(primitives), k or "history") for k, v in blocks.items()}

  layouts = {}
  for name, h in arrays.items():
    e = h.shape[1]
    steps = _darts_steps(e)
    if steps is not None:
      cells = [(i, j, i + 2) for i in range(steps) for j in range(i + 2)]
      layouts[name] = (steps, steps + 1, [(i, j, f"{_state_label(j)}$\\to${i}") for i, j, _ in cells])
    else:
      cols = math.ceil(math.sqrt(e))
      layouts[name] = (math.ceil(e / cols), cols, [(n // cols, n % cols, f"edge {n}") for n in range(e)])
  ncols = max(c for _, c, _ in layouts.values())
  nrows = sum(r for r, _, _ in layouts.values())

  panel_w, panel_h, legend_h = 2.0, 1.45, 0.55
  fig_w, fig_h = ncols * panel_w + 0.4, nrows * panel_h + legend_h + 0.3
  fig = Figure(figsize=(fig_w, fig_h))
  grid = fig.add_gridspec(nrows, ncols, left=0.5 / fig_w, right=1 - 0.15 / fig_w, bottom=0.35 / fig_h,
                          top=1 - legend_h / fig_h, hspace=0.6, wspace=0.3)
  colors = [_op_color(p) for p in primitives]
  row0 = 0
  for name, h in arrays.items():
    rows, _, cells = layouts[name]
    epochs = np.arange(h.shape[0])
    ymax = float(h.max()) * 1.05 if h.max() > 0 else 1.0
    ymin = min(0.0, float(h.min()))
    for n, (r, c, title) in enumerate(cells):
      ax = fig.add_subplot(grid[row0 + r, c])
      for o, p in enumerate(primitives):
        ax.plot(epochs, h[:, n, o], color=colors[o], linewidth=1.1, linestyle="--" if p == "none" else "-",
                marker="o" if len(epochs) == 1 else None, markersize=3)
      ax.set_ylim(ymin, ymax)
      ax.set_title(f"{name}: {title}" if name else title, fontsize=7.5, pad=2)
      ax.tick_params(labelsize=6, length=2, pad=1)
      if len(epochs) > 1:
        ax.set_xlim(0, epochs[-1])
    row0 += rows
  handles = [Line2D([], [], color=col, linewidth=1.5, linestyle="--" if p == "none" else "-")
             for p, col in zip(primitives, colors)]
  fig.legend(handles, list(primitives), loc="upper center", ncol=min(len(primitives), max(2, ncols * 2)),
             fontsize=7, frameon=False, bbox_to_anchor=(0.5, 1 - 0.05 / fig_h))
  fig.text(0.5, 0.08 / fig_h, "epoch", ha="center", va="bottom", fontsize=8)
  return _save(fig, path_without_ext)


def plot_eigenvalues(epochs: Sequence[int], eigenvalues: Sequence[float], path_without_ext: str | os.PathLike,
                     stop_epoch: int | None = None, kept_epoch: int | None = None,
                     abandoned: Sequence[tuple[Sequence[tuple[int, float]], str]] = ()) -> list[str]:
  """Plots the α Hessian's largest eigenvalue against the epoch to PNG and SVG; `stop_epoch` (where DARTS-ES
  stopped the search) and `kept_epoch` (whose architecture it kept) are marked when given; `abandoned`:
  (epoch, eigenvalue) series that a DARTS-ADA roll-back discarded, each with its legend label, drawn dashed."""
  from matplotlib.figure import Figure
  from matplotlib.ticker import MaxNLocator

  epochs, values = np.asarray(epochs), np.asarray(eigenvalues, np.float64)
  if epochs.ndim != 1 or epochs.shape != values.shape or not epochs.size:
    raise ValueError(f"epochs and eigenvalues must be equal-length non-empty sequences, got {epochs.shape} and "
                     f"{values.shape}")
  fig = Figure(figsize=(5.0, 3.2))
  ax = fig.add_subplot(1, 1, 1)
  ax.plot(epochs, values, marker="o", markersize=3.5, linewidth=1.3, color="#1f77b4", label="largest eigenvalue")
  colors = ("#7f7f7f", "#bcbd22", "#8c564b", "#e377c2", "#17becf")
  for i, (points, label) in enumerate(abandoned):
    if points:
      ax.plot(*zip(*points), marker="x", markersize=4, linewidth=1.0, linestyle="--", color=colors[i % len(colors)],
              label=label)
  if kept_epoch is not None:
    ax.axvline(kept_epoch, color="#2ca02c", linestyle=":", linewidth=1.3, label=f"kept (epoch {kept_epoch})")
  if stop_epoch is not None:
    ax.axvline(stop_epoch, color="#d62728", linestyle="--", linewidth=1.3, label=f"DARTS-ES stop (epoch {stop_epoch})")
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.set_xlabel("epoch", fontsize=8)
  ax.set_ylabel(r"$\lambda_{max}$ of $\nabla^2_\alpha L_{val}$", fontsize=8)
  ax.tick_params(labelsize=7)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, frameon=False)
  fig.tight_layout()
  return _save(fig, path_without_ext)


class ScatterPanel(NamedTuple):
  """One panel of `plot_against_table`: `x` (a score per cell), `y` (its table accuracy), the panel's title and
  x label; `groups`: per point, the index of its group in `labels` (all 0 with one label); `as_rank` plots the
  score's rank (0 to 1) instead of its value, for scores spanning many scales (synflow)."""
  title: str
  xlabel: str
  x: Sequence[float]
  y: Sequence[float]
  groups: Sequence[int] | None = None
  labels: Sequence[str] = ("cells",)
  as_rank: bool = False


def plot_against_table(panels: Sequence[ScatterPanel], path_without_ext: str | os.PathLike,
                       ylabel: str = "table test accuracy (%)") -> list[str]:
  """Scatter plots of scores against a benchmark table's accuracy, one panel per score, to PNG and SVG (the
  points rasterized, so thousands of cells keep the SVG small)."""
  from matplotlib.figure import Figure

  if not panels:
    raise ValueError("plot_against_table needs at least one panel")
  cols = min(3, len(panels))
  rows = math.ceil(len(panels) / cols)
  fig = Figure(figsize=(3.4 * cols, 3.0 * rows))
  colors = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")
  for i, p in enumerate(panels):
    x, y = np.asarray(p.x, np.float64), np.asarray(p.y, np.float64)
    if x.shape != y.shape or x.ndim != 1:
      raise ValueError(f"panel {p.title!r}: x and y must be equal-length sequences, got {x.shape} and {y.shape}")
    keep = np.isfinite(x) & np.isfinite(y)
    if p.as_rank and keep.any():
      ranks = np.full(x.shape, np.nan)
      ranks[keep] = np.argsort(np.argsort(x[keep], kind="stable"), kind="stable") / max(keep.sum() - 1, 1)
      x = ranks
    groups = np.zeros(x.shape, int) if p.groups is None else np.asarray(p.groups)
    ax = fig.add_subplot(rows, cols, i + 1)
    size = 4 if x.size > 1000 else 14
    for g, label in enumerate(p.labels):
      m = keep & (groups == g)
      ax.scatter(x[m], y[m], s=size, alpha=0.35 if x.size > 1000 else 0.8, color=colors[g % len(colors)],
                 label=f"{label} ({int(m.sum())})", linewidths=0, rasterized=True)
    ax.set_title(p.title, fontsize=8)
    ax.set_xlabel(p.xlabel + (" (rank, 0-1)" if p.as_rank else ""), fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if len(p.labels) > 1:
      ax.legend(fontsize=7, frameon=False)
  fig.tight_layout()
  return _save(fig, path_without_ext)
