"""The results of a suite: rows (mean ± std over seeds), differences to baselines, and the
markdown table, JSON and figures written from them.

A value that a run does not have (missing from `final_results.json`, None or NaN there, e.g.
the train s/iter of an evaluation-only run or the AP of a test split without ground truth) is
None in the rows and the JSON, and "-" in the table; it never stops the report.
"""

import json
import math
import shutil
import statistics
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..atomic import atomic_write_text
from .runs import slug
from .summary import POSITIVE_COLUMNS

__all__ = [
    "AP_COLUMNS",
    "NUMERIC_COLUMNS",
    "aggregate",
    "markdown_table",
    "paired_differences",
    "plot_ap_vs_iou",
    "summarize",
    "write_json",
]

AP_COLUMNS = ["AP", "AP50", "AP60", "AP70", "AP75", "AP80", "AP90", "APs", "APm", "APl"]
SPEED_COLUMNS = ["train_s_per_iter", "inference_s_per_image"]
DIAGNOSTIC_COLUMNS = ["pearson_score_vs_iou"] + POSITIVE_COLUMNS
NUMERIC_COLUMNS = AP_COLUMNS + SPEED_COLUMNS + ["num_parameters"] + DIAGNOSTIC_COLUMNS
RATIO_COLUMNS = SPEED_COLUMNS + ["num_parameters"]  # differences shown as ratios
IOU_COLUMNS = [("AP50", 0.5), ("AP60", 0.6), ("AP70", 0.7), ("AP80", 0.8), ("AP90", 0.9)]
HEADERS = {
    "train_s_per_iter": "train s/iter",
    "inference_s_per_image": "inf s/img",
    "num_parameters": "params",
    "pearson_score_vs_iou": "r(score, IoU)",
    **{k: f"pos{k[3:]}" for k in POSITIVE_COLUMNS},
}
OK_STATUSES = ("ok", "reused", "done")


def _number(value) -> Optional[float]:
    """A finite number, or None (for None, NaN, inf, strings, booleans)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def summarize(name: str, payload: Optional[dict], summary: Optional[dict] = None) -> dict:
    """One run's row: the AP columns and speeds of its `final_results.json` payload, plus the
    parameter count and the diagnostics of its `run_summary`; missing values are None."""
    payload = payload if isinstance(payload, dict) else {}
    results = payload.get("results") if isinstance(payload.get("results"), dict) else {}
    bbox = results.get("bbox") if isinstance(results.get("bbox"), dict) else {}
    speed = payload.get("speed") if isinstance(payload.get("speed"), dict) else {}
    row = {"name": name, "status": "ok"}
    row.update({k: _number(bbox.get(k)) for k in AP_COLUMNS})
    row.update({k: _number(speed.get(k)) for k in SPEED_COLUMNS})
    summary = summary or {}
    row["num_parameters"] = _number(summary.get("num_parameters"))
    diagnostics = summary.get("misalignment") or {}
    row["pearson_score_vs_iou"] = _number(diagnostics.get("pearson_score_vs_iou"))
    counts = list((diagnostics.get("positives_by_iou") or {}).values())
    for i, k in enumerate(POSITIVE_COLUMNS):
        row[k] = _number(counts[i]) if i < len(counts) else None
    return row


def _mean_std(values: List[float]):
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(name: str, rows: List[dict]) -> dict:
    """Mean of each column over the seeds' rows that have it, with the sample standard
    deviation under `<column>_std` (0 for one value); `num_seeds` counts the rows that
    succeeded, `runs` holds all of them."""
    ok = [r for r in rows if r.get("status", "ok") in OK_STATUSES]
    out = {"name": name, "num_seeds": len(ok), "runs": rows}
    failed = [r for r in rows if r not in ok]
    out["status"] = "ok" if not failed else ("failed" if not ok else "partial")
    for k in NUMERIC_COLUMNS:
        out[k], out[k + "_std"] = _mean_std([r[k] for r in ok if r.get(k) is not None])
    return out


def paired_differences(reference: dict, row: dict) -> dict:
    """Mean and sample std over seeds of `row` minus `reference`, seed by seed (both aggregated
    rows of the same seeds, in the same order; a seed missing either value is left out): a run
    and its reference share the seed, hence the initialisation and the order of the data, so
    these differences vary less than the rows themselves. Speeds and parameter counts also
    get `<column>_ratio`, row mean / reference mean."""
    out = {"name": f"{row['name']} - {reference['name']}", "baseline": reference["name"]}
    pairs = [
        (r, ref)
        for r, ref in zip(row["runs"], reference["runs"])
        if r.get("status", "ok") in OK_STATUSES and ref.get("status", "ok") in OK_STATUSES
    ]
    out["num_seeds"] = len(pairs)
    for k in NUMERIC_COLUMNS:
        diffs = [
            r[k] - ref[k] for r, ref in pairs if r.get(k) is not None and ref.get(k) is not None
        ]
        out[k], out[k + "_std"] = _mean_std(diffs)
    for k in RATIO_COLUMNS:
        ok = row.get(k) is not None and reference.get(k)
        out[k + "_ratio"] = row[k] / reference[k] if ok else None
    return out


def _params(n: Optional[float]) -> str:
    return "-" if n is None else f"{n / 1e6:.2f}M"


def _cell(row: dict, k: str, with_std: bool, difference: bool = False) -> str:
    """One table cell: "-" for a missing value, "± std" with seeds, signed for differences."""
    if difference and k in RATIO_COLUMNS:
        ratio = row.get(k + "_ratio")
        return "-" if ratio is None else f"x{ratio:.2f}"
    value = row.get(k)
    if value is None:
        return "-"
    if k == "num_parameters":
        return _params(value)
    digits = {"pearson_score_vs_iou": 3, **{c: 3 for c in SPEED_COLUMNS}}.get(k, 1)
    if k in POSITIVE_COLUMNS and not with_std:
        digits = 0
    sign = "+" if difference else ""
    text = f"{value:{sign}.{digits}f}"
    if with_std and k not in SPEED_COLUMNS:
        text += f" ± {row.get(k + '_std') or 0.0:.{digits}f}"
    return text


def markdown_table(
    rows: Sequence[dict],
    with_std: bool = False,
    differences: Optional[Dict[str, List[dict]]] = None,
    seeds_column: bool = True,
    first_header: str = "config",
) -> str:
    """The markdown table of `rows`; after each row, one "Δ vs <baseline>" row for each of its
    entries in `differences` (by row name, a list of `paired_differences`, in order): signed
    differences, ratios for speeds and parameters."""
    cols = NUMERIC_COLUMNS
    headers = [HEADERS.get(k, k) for k in cols] + (["seeds"] if seeds_column else [])
    lines = [f"| {first_header} | " + " | ".join(headers) + " |", "|---" * (len(headers) + 1) + "|"]
    for r in rows:
        name = r["name"]
        if r.get("status") == "failed":
            name += " — FAILED"
        elif r.get("status") == "partial":
            name += f" — {len(r['runs']) - r['num_seeds']} of {len(r['runs'])} seeds FAILED"
        vals = [_cell(r, k, with_std) for k in cols]
        vals += [str(r.get("num_seeds", 1))] if seeds_column else []
        lines.append(f"| {name} | " + " | ".join(vals) + " |")
        for diff in (differences or {}).get(r["name"], ()):
            vals = [_cell(diff, k, with_std and diff["num_seeds"] > 1, True) for k in cols]
            vals += [str(diff["num_seeds"])] if seeds_column else []
            lines.append(f"| Δ vs {diff['baseline']} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def _save(figure: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def plot_ap_vs_iou(rows: Sequence[dict], path: Path, title: str = "AP against IoU threshold"):
    """AP at IoU 0.5 ... 0.9 of every row (mean, with the std over seeds as error bars);
    missing values leave gaps."""
    figure = Figure(figsize=(6, 4))
    ax = figure.subplots()
    nan = float("nan")
    for r in rows:
        ys = [nan if r.get(k) is None else r[k] for k, _ in IOU_COLUMNS]
        errs = [r.get(k + "_std") or 0.0 for k, _ in IOU_COLUMNS]
        ax.errorbar(
            [t for _, t in IOU_COLUMNS], ys, yerr=errs, marker="o", capsize=3, label=r["name"]
        )
    ax.set_xlabel("IoU threshold")
    ax.set_ylabel("AP (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(figure, path)


def plot_positives(rows: Sequence[dict], path: Path) -> bool:
    """Positives after NMS per IoU group, one bar per row that has them (IoU-Net Fig. 3);
    False when no row has them (nothing is written)."""
    from d2align.diagnostics import plot_positives_by_iou

    counts = {
        r["name"]: [r[k] for k in POSITIVE_COLUMNS]
        for r in rows
        if all(r.get(k) is not None for k in POSITIVE_COLUMNS)
    }
    if not counts:
        return False
    plot_positives_by_iou(counts, str(path), title="positives after NMS, by IoU with their GT")
    return True


def copy_figures(run_figures: Dict[str, Optional[str]], folder: Path) -> Dict[str, str]:
    """Copy each run's diagnostics figure into `folder` as `<run name>.png`."""
    out = {}
    for name, figure in run_figures.items():
        if figure and Path(figure).is_file():
            target = folder / f"{slug(name)}.png"
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(figure, target)
            out[name] = str(target)
    return out


def _plain(value):
    """`value` with every NaN / inf replaced by None (valid JSON) and paths as strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(payload: dict, path: Path) -> None:
    atomic_write_text(path, json.dumps(_plain(payload), indent=2, allow_nan=False) + "\n")
