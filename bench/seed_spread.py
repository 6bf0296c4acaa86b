"""Seed spread of the accuracy benchmark: the same folds trained with several seeds.

    .venv/bin/python bench/seed_spread.py runs/bench-seeds/results-s*.json \\
        runs/bench-seeds/results-ens3-*.json --out bench/results/seed-spread.md

Reads JSON results of ``bench/accuracy.py`` runs that differ in ``--seed`` (and, as
separate rows, in anything else: ``--ensemble``/``--members-from``, ``--ema``, ...). A file
may hold several datasets, and one dataset's folds may come from several files (e.g.
``--only-folds`` runs). For every dataset, variant and fold it lists PCC@M and MSE skill
as mean ± sample std over seeds with their range, then the mean over folds of the fold
means and of the fold stds: the "seed std" issue 16 asks to bring down. With several
``--method`` (e.g. ``pixnet spotcrop ridge``), each method gets its rows, and
``--paired-against pixnet`` adds each method's difference from that one, paired over the
(fold, seed) runs both have: mean ± std and in how many the reference is higher.
``--paired-variants`` does the same between the variants of one method (e.g. runs with
``--consistency 1`` against the default's runs of the same seeds): the variant of the
first result file minus each other one. Writes Markdown (``--out``) and JSON beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import emit  # noqa: E402

METRICS = ("PCC@M", "skill")
# config entries that may differ between runs of one variant
_SAME_VARIANT = {
    "seed",
    "out",
    "samples",
    "resume",
    "overwrite",
    "only_folds",
    "threads",
    "methods",
}


def variant_label(config: dict[str, Any], differs: list[str], method: str = "") -> str:
    """A row label: the method (when given), the model count and every setting in
    ``differs``."""
    k = int(config.get("ensemble", 1) or 1)
    parts = [method] if method else []
    parts += ["single model" if k == 1 else f"ensemble of {k}"]
    parts += [f"{key} {config.get(key)}" for key in differs if key != "ensemble"]
    return ", ".join(parts)


def collect(
    results: list[dict[str, Any]], method: str, name_method: bool = False
) -> dict[str, Any]:
    """dataset -> variant label -> fold -> {"seeds": [...], metric: [...]} (seed order);
    labels start with the method's name when ``name_method``."""
    from pixnet.eval.crossval import CrossValConfig, recorded_with_defaults

    runs = []  # (dataset, config key, config, fold record)
    for res in results:
        for ds, r in res["datasets"].items():
            if method not in r["methods"]:
                continue
            # settings older runs lack: the defaults, or off where the default changed since
            cfg = recorded_with_defaults(r["config"], CrossValConfig, drop=())
            if not cfg.get("distill_epochs"):  # rounds of no epochs: the same training
                cfg["distill_rounds"] = 0
            key = json.dumps(
                {k: v for k, v in cfg.items() if k not in _SAME_VARIANT}, sort_keys=True
            )
            runs += [(ds, key, cfg, f) for f in r["folds"] if method in f["methods"]]
    keys_by_ds: dict[str, list[str]] = {}
    for ds, key, _, _ in runs:
        keys_by_ds.setdefault(ds, [])
        if key not in keys_by_ds[ds]:
            keys_by_ds[ds].append(key)
    out: dict[str, Any] = {}
    for ds, keys in keys_by_ds.items():
        configs = [json.loads(k) for k in keys]
        differs = sorted(
            {k for c in configs for k in c if any(c.get(k) != o.get(k) for o in configs)}
        )
        tag = method if name_method else ""
        labels = {k: variant_label(c, differs, tag) for k, c in zip(keys, configs, strict=True)}
        table: dict[str, dict[str, dict[str, list[Any]]]] = {labels[k]: {} for k in keys}
        for d, key, cfg, fold in runs:
            if d != ds:
                continue
            cell = table[labels[key]].setdefault(
                fold["name"], {"seeds": [], **{m: [] for m in METRICS}}
            )
            if cfg["seed"] in cell["seeds"]:
                raise SystemExit(
                    f"error: {ds} fold {fold['name']} ({labels[key]}): seed {cfg['seed']} "
                    "appears in two result files; pass each run once"
                )
            cell["seeds"].append(cfg["seed"])
            for m in METRICS:
                v = fold["methods"][method]["fold"][m]  # None: undefined (training mean's PCC)
                cell[m].append(float("nan") if v is None else float(v))
        out[ds] = table
    return out


def _cell(values: list[float]) -> str:
    a = np.asarray(values)
    if np.isnan(a).all():
        return "n/a"
    if a.size == 1:
        return f"{a[0]:.3f}"
    return f"{a.mean():.3f} ± {a.std(ddof=1):.3f} ({a.min():.3f} to {a.max():.3f})"


def summary(cells: dict[str, dict[str, list[Any]]], metric: str) -> dict[str, float]:
    """Mean over folds of the fold means and of the fold seed stds (NaN: one seed)."""
    means = [float(np.mean(c[metric])) for c in cells.values()]
    stds = [
        float(np.std(c[metric], ddof=1)) if len(c[metric]) > 1 else np.nan for c in cells.values()
    ]
    return {"mean": float(np.mean(means)), "seed_std": float(np.mean(stds))}


def format_markdown(table: dict[str, Any]) -> str:
    lines = []
    for ds, variants in table.items():
        folds = sorted({f for cells in variants.values() for f in cells})
        for metric in METRICS:
            lines += [
                f"{ds}, {metric} per fold: mean ± std over seeds (range)",
                "",
                "| variant | seeds per fold | "
                + " | ".join(folds)
                + " | mean of fold means | mean of fold stds |",
                "|---|---:|" + "---:|" * (len(folds) + 2),
            ]
            for label, cells in variants.items():
                n = sorted({len(c["seeds"]) for c in cells.values()})
                row = [_cell(cells[f][metric]) if f in cells else "" for f in folds]
                s = summary(cells, metric)
                std = "n/a" if np.isnan(s["seed_std"]) else f"{s['seed_std']:.3f}"
                mean = "n/a" if np.isnan(s["mean"]) else f"{s['mean']:.3f}"
                lines.append(
                    f"| {label} | {'/'.join(map(str, n))} | "
                    + " | ".join(row)
                    + f" | {mean} | {std} |"
                )
            lines.append("")
    return "\n".join(lines)


def _one_variant(ds: str, variants: dict[str, Any], method: str) -> dict[str, Any] | None:
    """The cells of ``method``'s one variant in ``ds`` (None: the method has none there)."""
    if len(variants) > 1:
        raise SystemExit(
            f"error: {ds}: method {method} has {len(variants)} variants; pair one variant "
            "(pass only its result files)"
        )
    return next(iter(variants.values()), None)


def paired(
    by_method: dict[str, dict[str, Any]], reference: str, others: list[str]
) -> dict[str, dict[str, dict[str, Any]]]:
    """dataset -> method -> metric -> differences (reference minus method) over the
    (fold, seed) runs both have, with their count and how many favour the reference.
    ``by_method``: method -> :func:`collect`'s table. Each method must have one variant
    per dataset (else the pairing would be ambiguous)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for ds, variants in by_method[reference].items():
        ref = _one_variant(ds, variants, reference)
        if ref is None:
            continue
        for m in others:
            cells = _one_variant(ds, by_method[m].get(ds, {}), m)
            if cells is None:
                continue
            rec: dict[str, Any] = {}
            for metric in METRICS:
                d = []
                for fold, c in cells.items():
                    if fold not in ref:
                        continue
                    r = dict(zip(ref[fold]["seeds"], ref[fold][metric], strict=True))
                    d += [
                        r[seed] - v
                        for seed, v in zip(c["seeds"], c[metric], strict=True)
                        if seed in r
                    ]
                a = np.asarray(d)
                a = a[np.isfinite(a)]  # the training mean has no PCC
                rec[metric] = {
                    "n": int(a.size),
                    "mean": float(a.mean()) if a.size else float("nan"),
                    "std": float(a.std(ddof=1)) if a.size > 1 else float("nan"),
                    "reference_higher": int((a > 0).sum()),
                }
            out.setdefault(ds, {})[m] = rec
    return out


def paired_variants(table: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """:func:`paired` between the variants of one method: the first variant (that of the
    first result file) minus each other one, per dataset. Returns the pairs and each
    dataset's reference label (the labels name the settings that differ, which may not
    be the same ones in every dataset)."""
    out: dict[str, Any] = {}
    references: dict[str, str] = {}
    for ds, variants in table.items():
        labels = list(variants)
        if len(labels) < 2:
            raise SystemExit(f"error: {ds}: one variant only; nothing to pair")
        by_label = {label: {ds: {label: variants[label]}} for label in labels}
        out.update(paired(by_label, labels[0], labels[1:]))
        references[ds] = labels[0]
    return out, references


def format_paired(
    pairs: dict[str, Any], reference: str | dict[str, str], what: str = "method"
) -> str:
    """Markdown tables of :func:`paired`; ``reference``: the reference's name, or one per
    dataset."""
    lines = []
    for ds, methods in pairs.items():
        ref = reference if isinstance(reference, str) else reference[ds]
        lines += [
            f"{ds}: {ref} minus each {what}, paired over the (fold, seed) runs both have",
            "",
            f"| {what} | runs | ΔPCC@M | higher PCC@M | Δskill | higher skill |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for m, rec in methods.items():
            cells = []
            for metric in METRICS:
                r = rec[metric]
                if not r["n"]:
                    cells += ["n/a", "n/a"]
                    continue
                std = f" ± {r['std']:.3f}" if r["n"] > 1 else ""
                cells += [f"{r['mean']:+.3f}{std}", f"{r['reference_higher']} of {r['n']}"]
            runs = max(rec[metric]["n"] for metric in METRICS)
            lines.append(f"| {m} | {runs} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "results",
        nargs="+",
        help="JSON results of bench/accuracy.py (or a crossval results.json in <dataset>/)",
    )
    ap.add_argument(
        "--method",
        nargs="+",
        default=["pixnet"],
        help="method(s) of the accuracy benchmark; several: rows per method",
    )
    ap.add_argument(
        "--paired-against",
        default="",
        help="with several --method: this method minus each other one, paired per fold and seed",
    )
    ap.add_argument(
        "--paired-variants",
        action="store_true",
        help="with one --method: the variant of the first result file minus each other "
        "variant (runs differing in a setting), paired per fold and seed",
    )
    ap.add_argument("--out", default="", help="Markdown file (JSON beside it)")
    args = ap.parse_args(argv)
    if args.paired_variants and (len(args.method) > 1 or args.paired_against):
        ap.error("--paired-variants pairs the variants of one --method")
    results = []
    for p in args.results:
        res = json.loads(Path(p).read_text())
        if "datasets" not in res:  # one dataset's crossval results.json, in <dataset>/
            res = {"datasets": {Path(p).parent.name: res}}
        results.append(res)
    if args.paired_against and args.paired_against not in args.method:
        ap.error(f"--paired-against {args.paired_against} must be one of --method")
    several = len(args.method) > 1
    by_method = {m: collect(results, m, name_method=several) for m in args.method}
    table: dict[str, Any] = {}
    for per_dataset in by_method.values():
        for ds, variants in per_dataset.items():
            table.setdefault(ds, {}).update(variants)
    if not table:
        print(f"error: no result holds method(s) {' '.join(args.method)}", file=sys.stderr)
        return 2
    md = format_markdown(table)
    record: dict[str, Any] = table
    if args.paired_against:
        others = [m for m in args.method if m != args.paired_against]
        pairs = paired(by_method, args.paired_against, others)
        md += "\n" + format_paired(pairs, args.paired_against)
        record = {"table": table, "paired": {"reference": args.paired_against, **pairs}}
    if args.paired_variants:
        pairs, references = paired_variants(table)
        md += "\n" + format_paired(pairs, references, "variant")
        record = {"table": table, "paired": {"reference": references, **pairs}}
    emit(md, record, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
