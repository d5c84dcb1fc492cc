"""Retraining several genotypes from scratch under one protocol, with seeds, against random cells.

The question after a search is whether its cell beats cells drawn at random by more than the retraining's own
seed-to-seed spread. `run_retrain_comparison` retrains every genotype of ``config.genotypes`` (name -> a
registry name, a genotype file or ``"random"``) with each of its ``config.seeds[name]`` under the one
``config.retrain`` protocol, in resumable work directories ``runs/<name>/seed<k>``, and writes ``report.md`` /
``report.json``: per genotype the test accuracy's mean ± std over seeds, parameters and CPU/GPU time, and
`verdict`'s plain answer. A ``"random"`` entry draws a different random genotype for every seed (the seed picks
the genotype and the initialization), so its spread is that of random cells.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Mapping, Optional

from darts_jax import compare
from darts_jax import retrain as retrain_lib
from darts_jax import workdir as wd

RANDOM = "random"


def verdict(rows: Mapping[str, Mapping[str, Any]], searched: str, baseline: str = RANDOM) -> Optional[str]:
  """Whether `searched`'s mean test accuracy exceeds `baseline`'s by more than the larger of their sample
  standard deviations over seeds (None when either has no finished run)."""
  a, b = rows.get(searched, {}).get("test_acc"), rows.get(baseline, {}).get("test_acc")
  if not a or not b or a.get("mean") is None or b.get("mean") is None:
    return None
  gap, spread = a["mean"] - b["mean"], max(a["std"], b["std"])
  if gap > spread:
    word = "beats"
  elif gap > 0:
    word = "is above, but within the seed spread of,"
  else:
    word = "does not beat"
  return (f"{searched} {word} {baseline}: {100 * a['mean']:.2f} % vs {100 * b['mean']:.2f} % "
          f"(difference {100 * gap:+.2f} points; larger seed std {100 * spread:.2f} points)")


def run_retrain_comparison(config, workdir: str) -> Dict[str, Any]:
  """Retrains (or resumes) every genotype × seed of `config` and writes and returns the report."""
  os.makedirs(workdir, exist_ok=True)
  rows: Dict[str, Dict[str, Any]] = {}
  executed: List[str] = []
  for name, spec in config.genotypes.items():
    runs = []
    for seed in config.seeds[name]:
      run_dir = os.path.join(workdir, "runs", name, f"seed{int(seed)}")
      cfg = compare.run_config(config.retrain, genotype=str(spec), seed=int(seed))
      summary = compare.finished_summary(run_dir, cfg.to_dict(), retrain_lib.RESUMABLE_KEYS)
      if summary is None:
        summary = retrain_lib.train_and_evaluate(cfg, run_dir)
        executed.append(f"{name}/seed{int(seed)}")
      runs.append({"seed": int(seed), "test_acc": summary["test_acc"], "num_params": summary["num_params"],
                   "train_seconds": summary["train_seconds"], "genotype": summary["genotype"]})
    rows[name] = {"spec": str(spec), "runs": runs,
                  "test_acc": compare.mean_std(r["test_acc"] for r in runs),
                  "num_params": compare.mean_std(r["num_params"] for r in runs),
                  "hours": sum(r["train_seconds"] for r in runs) / 3600.0}
  hardware = compare.hardware_info()
  searched = config.get("searched") or next(iter(config.genotypes))
  report = {"rows": rows, "searched": searched, "verdict": verdict(rows, searched),
            "retrain_config": config.retrain.to_dict(), "hardware": hardware,
            "total_hours": sum(r["hours"] for r in rows.values()), "code_version": wd.code_version(),
            "versions": wd.versions(), "executed_this_call": executed}
  wd.write_json(os.path.join(workdir, "report.json"), report)
  wd.atomic_write(os.path.join(workdir, "report.md"), report_markdown(report))
  return report


def report_markdown(report: Mapping[str, Any]) -> str:
  """The table (one row per genotype, mean ± sample std over seeds) and the verdict."""
  kind = report["hardware"]["backend"].upper() + "-hours"
  lines = ["# Retraining comparison", "",
           "Every genotype retrained from scratch under one protocol (config below); test accuracy on the full "
           "test split after the last epoch, mean ± sample std over seeds. `random` draws a different cell per "
           "seed.", "",
           f"| genotype | seeds | test acc (%) | per seed (%) | parameters | {kind} |", "|---|---|---|---|---|---|"]
  for name, r in report["rows"].items():
    per = ", ".join(f"{100 * x['test_acc']:.2f}" for x in r["runs"])
    lines.append(f"| {name} | {', '.join(str(x['seed']) for x in r['runs'])} | {compare.format_mean_std(r['test_acc'], 100)} "
                 f"| {per} | {compare.format_mean_std(r['num_params'], 1, 0)} | {r['hours']:.2f} |")
  lines += ["", f"**{report['verdict'] or 'no verdict: a genotype has no finished run'}.**", "",
            f"Total: {report['total_hours']:.2f} {kind} on {report['hardware']['cpu_count']} CPUs "
            f"({report['hardware']['backend']}); code `{report['code_version']}`.", "", "Genotypes:", ""]
  for name, r in report["rows"].items():
    lines += [f"- {name} seed {x['seed']}: `{x['genotype']}`" for x in r["runs"]]
  lines += ["", "Retrain config (genotype and seed set per run):", "", "```json",
            json.dumps(report["retrain_config"], indent=2, sort_keys=True), "```", ""]
  return "\n".join(lines)
