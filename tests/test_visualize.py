"""Tests for darts_jax.visualize: cell and α-history pictures are written as valid PNG and SVG files."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from darts_jax import genotypes as G
from darts_jax import visualize as V
from darts_jax.search_space import DARTS_PRIMITIVES, NB201_PRIMITIVES

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check_files(paths: list[str], expected: list[Path]) -> None:
  assert [Path(p) for p in paths] == expected
  for p in expected:
    data = p.read_bytes()
    if p.suffix == ".png":
      assert data.startswith(PNG_MAGIC)
      assert len(data) > 5000
    else:
      assert p.suffix == ".svg"
      assert b"<svg" in data[:2000] and data.rstrip().endswith(b"</svg>")


def test_import_does_not_load_matplotlib():
  code = "import sys, darts_jax.visualize; print('matplotlib' in sys.modules)"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       cwd=Path(__file__).resolve().parents[1])
  assert out.stdout.strip() == "False"


def test_plot_cell_writes_png_and_svg_with_op_labels(tmp_path):
  g = G.PUBLISHED["DARTS_V2"]
  paths = V.plot_cell(g, "normal", tmp_path / "sub" / "darts_v2_normal")
  _check_files(paths, [tmp_path / "sub" / "darts_v2_normal.png", tmp_path / "sub" / "darts_v2_normal.svg"])
  svg = Path(paths[1]).read_text()
  for op in ("sep_conv_3x3", "skip_connect", "dil_conv_3x3"):
    assert op in svg
  assert "max_pool_3x3" not in svg


def test_plot_genotype_both_cells_including_five_node_cells(tmp_path):
  for name in ("DARTS_V2", "AmoebaNet"):
    paths = V.plot_genotype(G.PUBLISHED[name], str(tmp_path / name))
    _check_files(paths, [tmp_path / f"{name}_{c}.{e}" for c in ("normal", "reduce") for e in ("png", "svg")])
  assert "conv_7x1_1x7" in (tmp_path / "AmoebaNet_reduce.svg").read_text()


def test_plot_cell_rejects_bad_arguments(tmp_path):
  with pytest.raises(ValueError, match="which must be"):
    V.plot_cell(G.PUBLISHED["DARTS_V2"], "both", tmp_path / "x")
  bad = G.PUBLISHED["DARTS_V2"]._replace(normal=[("skip_connect", 0), ("skip_connect", 2)])
  with pytest.raises(ValueError, match="takes input 2"):
    V.plot_cell(bad, "normal", tmp_path / "x")


def test_plot_alpha_history_list_and_dict(tmp_path):
  rng = np.random.default_rng(0)
  history = [G.softmax(rng.normal(size=(14, 8))) for _ in range(5)]
  _check_files(V.plot_alpha_history(history, DARTS_PRIMITIVES, tmp_path / "hist.png"),
               [tmp_path / "hist.png", tmp_path / "hist.svg"])
  both = {"normal": history, "reduce": np.stack(history[::-1])}
  _check_files(V.plot_alpha_history(both, DARTS_PRIMITIVES, tmp_path / "both"),
               [tmp_path / "both.png", tmp_path / "both.svg"])
  svg = (tmp_path / "both.svg").read_text()
  assert "dil_conv_5x5" in svg and "reduce" in svg


def test_plot_alpha_history_other_shapes_and_errors(tmp_path):
  one_epoch = [np.full((6, 5), 0.2)]
  _check_files(V.plot_alpha_history(one_epoch, NB201_PRIMITIVES, tmp_path / "nb201"),
               [tmp_path / "nb201.png", tmp_path / "nb201.svg"])
  with pytest.raises(ValueError, match="expected a non-empty list"):
    V.plot_alpha_history([np.zeros((14, 7))], DARTS_PRIMITIVES, tmp_path / "bad")
  with pytest.raises(ValueError, match="expected a non-empty list"):
    V.plot_alpha_history([], DARTS_PRIMITIVES, tmp_path / "bad")


def test_plot_nb201_cell(tmp_path):
  arch = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_1x1~1|none~2|"
  paths = V.plot_nb201(arch, tmp_path / "cell")
  _check_files(paths, [tmp_path / "cell.png", tmp_path / "cell.svg"])
  svg = Path(paths[1]).read_text()
  for op in ("nor_conv_3x3", "avg_pool_3x3", "skip_connect", "nor_conv_1x1", "none"):
    assert op in svg
  assert "sep_conv_3x3" not in svg
  with pytest.raises(ValueError, match="6 edges"):
    V.plot_nb201(("none",) * 5, tmp_path / "bad")



def test_eigenvalue_picture_with_and_without_the_early_stop(tmp_path):
  for name, marks in (("plain", ()), ("stopped", (14, 6))):
    paths = V.plot_eigenvalues([0, 2, 4, 14], [1.0, 1.1, 1.2, 3.0], tmp_path / name, *marks)
    _check_files(paths, [tmp_path / f"{name}.png", tmp_path / f"{name}.svg"])
  assert "DARTS-ES stop (epoch 14)" in (tmp_path / "stopped.svg").read_text()
  assert "DARTS-ES stop" not in (tmp_path / "plain.svg").read_text()
  V.plot_eigenvalues([0, 2, 4], [1.0, 1.1, 1.2], tmp_path / "ada", abandoned=[([(6, 2.0), (8, 3.0)], "roll-back 1"),
                                                                             ([], "roll-back 2")])
  svg = (tmp_path / "ada.svg").read_text()
  assert "roll-back 1" in svg and "roll-back 2" not in svg   # an empty series draws nothing, not even a label
  with pytest.raises(ValueError, match="equal-length"):
    V.plot_eigenvalues([0, 1], [1.0], tmp_path / "bad")


def test_scores_against_the_table(tmp_path):
  """One panel per score, the ranks of a many-scale score, two groups with their counts in the legend; NaN
  scores dropped; mismatched lengths and no panels are errors."""
  x = [1e-3, 1e5, float("nan"), 10.0]
  panels = [V.ScatterPanel("synflow", "synflow", x, [80.0, 93.0, 90.0, 85.0], as_rank=True),
            V.ScatterPanel("one-shot", "acc", [0.5, 0.6, 0.7], [91.0, 92.0, 93.0], [0, 1, 1], ("sampled", "top k"))]
  paths = V.plot_against_table(panels, tmp_path / "scatter")
  _check_files(paths, [tmp_path / "scatter.png", tmp_path / "scatter.svg"])
  svg = (tmp_path / "scatter.svg").read_text()
  assert "sampled (1)" in svg and "top k (2)" in svg and "(rank, 0-1)" in svg
  with pytest.raises(ValueError, match="equal-length"):
    V.plot_against_table([V.ScatterPanel("bad", "x", [1.0], [1.0, 2.0])], tmp_path / "bad")
  with pytest.raises(ValueError, match="at least one panel"):
    V.plot_against_table([], tmp_path / "none")
