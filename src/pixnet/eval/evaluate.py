"""``pixnet evaluate``: prediction ``.h5ad`` files and a sample manifest in, metrics out.

Each prediction file (``pixnet predict`` output, or an ``.h5ad`` written by another tool:
``X`` predictions ``(N, G)``, ``obs_names`` spot ids, ``var_names`` genes) is matched to
one sample of the manifest: by ``--pred SAMPLE=path.h5ad`` if given, else by the single
library id of ``uns["spatial"]``. Truth is the sample's counts on the targets' scale,
``log1p(target_sum * count / spot total)`` (:meth:`GenePanel.transform`), with
``target_sum`` and the training means (for the MSE skill) from ``--model`` when given,
else ``target_sum = 1e4`` and no skill. Genes and spots are matched by name; what does
not match is logged and reported. Genes are those matched in every file, so every row
of the table is over the same genes.

Writes ``{out}.json`` (all metrics, per-gene PCCs, matching report, configuration) and
``{out}.md`` (one row per slide, the pooled row and the mean +- std over slides).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pixnet._constants import AnnDataKeys as A
from pixnet._constants import PredictionKeys as P
from pixnet.cli_options import add_command, dataclass_from_args
from pixnet.data.preprocess import DEFAULT_TARGET_SUM, GenePanel
from pixnet.errors import PixNetInputError
from pixnet.eval.metrics import METRICS, evaluate_slides
from pixnet.io.atomic import atomic_write_text, check_writable
from pixnet.io.prediction import PredictionFile, PredictionInfo, TargetScale
from pixnet.io.sample import Sample

log = logging.getLogger(__name__)

N_LISTED = 10
"""How many unmatched gene or spot names are listed in logs and the JSON."""

RAW_COUNT_MAX = 50.0
"""Predictions above this look like raw counts (log-normalised targets stay below ~12)."""


@dataclass
class EvaluateConfig:
    pred: list[str] = field(
        default_factory=list,
        metadata={
            "help": "prediction .h5ad files; SAMPLE=path.h5ad names the sample when "
            "uns['spatial'] does not hold exactly one library id; a predict --dense-map "
            ".zarr/.ome.tif is read at the sample's own spots"
        },
    )
    samples: str = field(default="", metadata={"help": "sample manifest CSV (the truth)"})
    model: str = field(
        default="",
        metadata={"help": "model.pt: its gene panel's target_sum and training means (skill)"},
    )
    out: str = field(default="", metadata={"help": "output prefix: writes OUT.json and OUT.md"})
    overwrite: bool = field(default=False, metadata={"help": "replace existing outputs"})


@dataclass
class Prediction:
    """One prediction file, read.

    Attributes:
        path: the ``.h5ad`` file.
        sample_id: the manifest sample it predicts.
        sample_from: how ``sample_id`` was found (``"argument"`` or ``"uns['spatial']"``).
        values: ``(N, G)`` float64 predictions.
        spot_ids: ``N`` spot ids (``obs_names``).
        genes: ``G`` gene names (``var_names``).
        info: ``uns["pixnet"]``, read (empty for files of other tools).
    """

    path: Path
    sample_id: str
    sample_from: str
    values: np.ndarray
    spot_ids: list[str]
    genes: list[str]
    info: PredictionInfo


def parse_pred_entry(entry: str) -> tuple[str | None, Path]:
    """``"SAMPLE=path.h5ad"`` -> ``("SAMPLE", path)``; a bare path -> ``(None, path)``."""
    if "=" in entry and not Path(entry).exists():
        sample_id, path = entry.split("=", 1)
        if not sample_id.strip() or not path.strip():
            raise PixNetInputError(
                "--pred", f"{entry!r} is not SAMPLE=path.h5ad", "write e.g. --pred C1=pred/C1.h5ad"
            )
        return sample_id.strip(), Path(path.strip())
    return None, Path(entry)


def _check_unique(names: list[str], path: Path, field_name: str, fix: str) -> None:
    dups = sorted(n for n, c in Counter(names).items() if c > 1)
    if dups:
        raise PixNetInputError(
            path,
            f"{field_name} has {len(dups)} duplicated name(s), e.g. {', '.join(dups[:N_LISTED])}",
            fix,
        )


def read_prediction(path: str | Path, sample_id: str | None = None) -> Prediction:
    """Read a prediction ``.h5ad``; the sample is ``sample_id`` or ``uns["spatial"]``'s key."""
    pf = PredictionFile(path, sample_id, require_spots=False)
    p, libraries = pf.path, pf.library_ids
    if sample_id is not None:
        sample_from = "argument"
        if len(libraries) == 1 and libraries != [sample_id]:
            raise PixNetInputError(
                p,
                f"given as sample {sample_id!r}, but its uns[{A.SPATIAL!r}] names sample "
                f"{libraries[0]!r}: it would be scored against the wrong sample",
                f"pass --pred {libraries[0]}={p} (or the bare path), or predict {sample_id}",
            )
        if libraries and libraries != [sample_id]:
            log.info("%s: uns['spatial'] names %s; using %s as given", p, libraries, sample_id)
    elif len(libraries) == 1:
        sample_id, sample_from = libraries[0], f"uns[{A.SPATIAL!r}]"
    else:
        found = f"it holds {', '.join(libraries)}" if libraries else "it is absent"
        raise PixNetInputError(
            p,
            f"uns[{A.SPATIAL!r}] does not name exactly one library id ({found}), so the "
            "sample is unknown",
            f"pass --pred SAMPLE_ID={p}",
        )
    spot_ids = pf.spot_ids()
    _check_unique(spot_ids, p, "obs_names", "give every spot a unique id (obs_names)")
    _check_unique(
        pf.genes, p, "var_names", "make gene names unique (adata.var_names_make_unique())"
    )
    return Prediction(
        path=p,
        sample_id=sample_id,
        sample_from=sample_from,
        values=pf.values(dtype=np.float64),
        spot_ids=spot_ids,
        genes=pf.genes,
        info=pf.info,
    )


def is_dense_map(path: str | Path) -> bool:
    """A ``pixnet predict --dense-map`` output (``.zarr`` store or ``.ome.tif``)."""
    name = Path(path).name.lower()
    return name.endswith((".zarr", ".ome.tif", ".ome.tiff"))


def read_dense_map_prediction(
    path: str | Path, sample_id: str | None, rows: dict[str, Any]
) -> Prediction:
    """Predictions at a sample's own spots read from a written dense map (area-weighted,
    as ``pixnet predict`` aggregates; no model is run). The sample is ``sample_id`` or the
    one recorded in the map."""
    from pixnet.io.dense_map import map_info
    from pixnet.io.manifest import load_sample
    from pixnet.predict.dense_map import spots_from_dense_map

    p = Path(path)
    info = map_info(p)
    sid = sample_id or str(info.get("library_id") or "")
    if sid not in rows:
        raise PixNetInputError(
            p,
            f"sample {sid!r} (from {'the argument' if sample_id else 'the map'}) is not in "
            "the manifest",
            f"pass --pred SAMPLE_ID={p} with one of {', '.join(rows)}",
        )
    sample = load_sample(rows[sid])
    genes = list(info["genes"])
    values = spots_from_dense_map(
        p, genes, sample.centres_px, sample.spot_size_px, sample.spot_shape
    )
    return Prediction(
        path=p,
        sample_id=sid,
        sample_from="argument" if sample_id else "the dense map",
        values=values.astype(np.float64),
        spot_ids=list(sample.spot_ids),
        genes=genes,
        info=PredictionInfo(spot_set=P.OWN_SPOTS, readout=info.get("readout"), layout=0),
    )


def scale_warnings(pred: Prediction, target_sum: float) -> list[str]:
    """Reasons to think ``pred`` is not on the targets' scale (empty when it looks fine)."""
    out = []
    truth = TargetScale(target_sum=target_sum)
    expected = truth.describe()
    stated = pred.info.target
    if stated is not None and stated != truth:
        out.append(f"uns[{P.UNS!r}][{P.TARGET!r}] is {stated.describe()!r}, truth is {expected!r}")
    spot_set = pred.info.spot_set
    if spot_set and spot_set != P.OWN_SPOTS:
        out.append(
            f"spot set {spot_set!r} is not the sample's own spots: truth is the measured "
            "counts of the sample's spots"
        )
    v = pred.values[np.isfinite(pred.values)]
    if v.size == 0:
        out.append("no finite prediction")
        return out
    vmax, vmin = float(v.max()), float(v.min())
    if vmax > RAW_COUNT_MAX:
        out.append(
            f"max prediction {vmax:g} > {RAW_COUNT_MAX:g}: looks like raw counts or another "
            f"scale; truth is {expected} (typically 0 to 10)"
        )
    elif vmax > 0 and np.all(v == np.round(v)):
        out.append(f"all predictions are integers: looks like raw counts; truth is {expected}")
    if vmin < -1.0:
        out.append(f"min prediction {vmin:g} < -1: looks standardised; truth is {expected} >= 0")
    return out


def _listed(names: list[str]) -> dict[str, Any]:
    return {"n": len(names), "first": names[:N_LISTED]}


@dataclass
class Match:
    """Where the prediction's spots and genes are in the sample (same order as ``spot_ids``)."""

    pred_rows: np.ndarray  # (M,) rows of the prediction
    sample_rows: np.ndarray  # (M,) rows of the sample
    genes: list[str]  # prediction genes measured in the sample, prediction order
    report: dict[str, Any]


def match_prediction(pred: Prediction, sample: Sample) -> Match:
    """Match spots and genes by name; errors when none match, warns about the rest."""
    measured = set(sample.gene_names)
    genes = [g for g in pred.genes if g in measured]
    genes_unmatched = [g for g in pred.genes if g not in measured]
    sample_index = {s: i for i, s in enumerate(sample.spot_ids)}
    pred_rows = [i for i, s in enumerate(pred.spot_ids) if s in sample_index]
    spots_unmatched = [s for s in pred.spot_ids if s not in sample_index]
    predicted = set(pred.spot_ids)
    spots_unpredicted = [s for s in sample.spot_ids if s not in predicted]
    if not genes:
        raise PixNetInputError(
            pred.path,
            f"var_names: none of the {len(pred.genes)} prediction genes (e.g. "
            f"{', '.join(pred.genes[:3])}) is measured in sample {sample.sample_id} "
            f"(e.g. {', '.join(sample.gene_names[:3])})",
            "name genes as in the sample's counts (same symbols or ids)",
        )
    if not pred_rows:
        raise PixNetInputError(
            pred.path,
            f"obs_names: none of the {len(pred.spot_ids)} prediction spot ids (e.g. "
            f"{', '.join(pred.spot_ids[:3])}) is a spot of sample {sample.sample_id} "
            f"(e.g. {', '.join(sample.spot_ids[:3])})",
            "use the sample's spot ids as obs_names, or check --pred SAMPLE=path",
        )
    for what, names, total, of in (
        ("prediction genes (var_names)", genes_unmatched, len(pred.genes), "measured in"),
        ("prediction spots (obs_names)", spots_unmatched, len(pred.spot_ids), "spots of"),
    ):
        if names:
            log.warning(
                "%s: %d of %d %s are not %s sample %s and are left out, e.g. %s",
                pred.path,
                len(names),
                total,
                what,
                of,
                sample.sample_id,
                ", ".join(names[:N_LISTED]),
            )
    if spots_unpredicted:
        log.warning(
            "%s: %d of %d spots of sample %s have no prediction, e.g. %s",
            pred.path,
            len(spots_unpredicted),
            sample.n_spots,
            sample.sample_id,
            ", ".join(spots_unpredicted[:N_LISTED]),
        )
    rows = np.array(pred_rows, dtype=np.int64)
    report = {
        "n_pred_spots": len(pred.spot_ids),
        "n_pred_genes": len(pred.genes),
        "n_sample_spots": sample.n_spots,
        "n_spots_matched": len(pred_rows),
        "n_genes_matched": len(genes),
        "genes_unmatched": _listed(genes_unmatched),
        "spots_unmatched": _listed(spots_unmatched),
        "spots_without_prediction": _listed(spots_unpredicted),
    }
    return Match(
        pred_rows=rows,
        sample_rows=np.array([sample_index[pred.spot_ids[i]] for i in rows], dtype=np.int64),
        genes=genes,
        report=report,
    )


def json_safe(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf -> None, NumPy scalars and arrays -> Python."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _out_paths(out: str) -> tuple[Path, Path]:
    if not out:
        raise PixNetInputError("--out", "no output prefix given", "pass --out results/eval")
    prefix = Path(out)
    if prefix.suffix in (".json", ".md"):
        prefix = prefix.with_suffix("")
    return prefix.with_name(prefix.name + ".json"), prefix.with_name(prefix.name + ".md")


def _load_panel(model: str) -> tuple[float, dict[str, float] | None, str]:
    """``(target_sum, training means by gene or None, where they came from)``."""
    if not model:
        return (
            DEFAULT_TARGET_SUM,
            None,
            f"no --model given: truth with target_sum {DEFAULT_TARGET_SUM:g} (default) over "
            "the prediction's genes; no training means, so no MSE skill",
        )
    from pixnet.io.modelfile import load_model_file

    panel = GenePanel.from_dict(load_model_file(model)["panel"])
    means: dict[str, float] | None = dict(zip(panel.genes, panel.mean_targets, strict=False))
    if len(panel.mean_targets) != len(panel.genes):
        log.warning("%s: the gene panel has no training means; no MSE skill", model)
        means = None
    return panel.target_sum, means, f"gene panel of {model} (target_sum {panel.target_sum:g})"


def run_evaluate(cfg: EvaluateConfig) -> dict[str, Any]:
    """Evaluate the prediction files against the manifest's samples; write JSON and Markdown.

    Returns:
        The JSON content (NaN as ``None``): ``per_slide``, ``pooled`` and
        ``mean_over_slides`` metrics (see :func:`pixnet.eval.metrics.evaluate_slides`, each
        with ``pcc_per_gene``), ``files`` (matching report and warnings per sample),
        ``genes``, ``truth`` (scale and panel source), ``warnings``, ``config``, ``outputs``.
    """
    from pixnet.io.manifest import load_sample, read_manifest

    if not cfg.pred:
        raise PixNetInputError("--pred", "no prediction file given", "pass --pred pred/S1.h5ad")
    if not cfg.samples:
        raise PixNetInputError("--samples", "no manifest given", "pass --samples MANIFEST.csv")
    json_path, md_path = _out_paths(cfg.out)
    for p in (json_path, md_path):
        check_writable(p, cfg.overwrite)
    target_sum, train_means, panel_from = _load_panel(cfg.model)
    rows = {r.sample_id: r for r in read_manifest(cfg.samples)}

    preds: dict[str, Prediction] = {}
    for entry in cfg.pred:
        sample_id, path = parse_pred_entry(entry)
        if is_dense_map(path):  # spots read from the map's raster: no model run
            pred = read_dense_map_prediction(path, sample_id, rows)
        else:
            pred = read_prediction(path, sample_id)
        if pred.sample_id not in rows:
            raise PixNetInputError(
                path,
                f"sample {pred.sample_id!r} (from {pred.sample_from}) is not in {cfg.samples}",
                f"pass --pred SAMPLE_ID={path} with one of {', '.join(rows)}",
            )
        if pred.sample_id in preds:
            raise PixNetInputError(
                path,
                f"sample {pred.sample_id!r} is already evaluated from {preds[pred.sample_id].path}",
                "give one prediction file per sample (run evaluate again for another set)",
            )
        preds[pred.sample_id] = pred

    warnings: list[str] = []
    files: dict[str, dict[str, Any]] = {}
    matches: dict[str, tuple[Match, Sample]] = {}
    for sid, pred in preds.items():
        sample = load_sample(rows[sid])
        if sample.counts is None:
            raise PixNetInputError(
                pred.path, f"sample {sid} has no measured counts", "evaluate on measured samples"
            )
        match = match_prediction(pred, sample)
        scale = scale_warnings(pred, target_sum)
        for w in scale:
            log.warning("%s: %s", pred.path, w)
        warnings += [f"{pred.path}: {w}" for w in scale]
        r = match.report
        for key, what in (
            ("genes_unmatched", "prediction genes not measured in the sample"),
            ("spots_unmatched", "prediction spots not in the sample"),
            ("spots_without_prediction", "sample spots without prediction"),
        ):
            if r[key]["n"]:
                warnings.append(f"{pred.path}: {r[key]['n']} {what}, e.g. {r[key]['first'][:3]}")
        files[sid] = {
            "path": str(pred.path),
            "sample_from": pred.sample_from,
            "prediction_target": pred.info.target.describe() if pred.info.target else None,
            "spot_set": pred.info.spot_set or None,
            **r,
            "scale_warnings": scale,
        }
        matches[sid] = (match, sample)

    in_all = set.intersection(*(set(m.genes) for m, _ in matches.values()))
    genes = [g for g in next(iter(matches.values()))[0].genes if g in in_all]
    dropped = sorted(set().union(*(set(m.genes) for m, _ in matches.values())) - in_all)
    if not genes:
        raise PixNetInputError(
            "--pred",
            "no gene is matched in every prediction file",
            "evaluate files with a common gene set, or one file at a time",
        )
    if dropped:
        w = (
            f"{len(dropped)} genes are not matched in every file and are left out, "
            f"e.g. {dropped[:N_LISTED]}"
        )
        log.warning("%s", w)
        warnings.append(w)

    panel = GenePanel(genes=genes, target_sum=target_sum)
    per_slide = {}
    for sid, (match, sample) in matches.items():
        cols = np.array([preds[sid].genes.index(g) for g in genes], dtype=np.int64)
        values = preds[sid].values[np.ix_(match.pred_rows, cols)]
        truth = panel.transform(sample)[match.sample_rows].astype(np.float64)
        per_slide[sid] = (values, truth)
    train_mean = None
    n_skill_genes = 0
    if train_means is not None:
        train_mean = np.array([train_means.get(g, np.nan) for g in genes], dtype=np.float64)
        n_skill_genes = int(np.isfinite(train_mean).sum())
        if n_skill_genes < len(genes):
            w = (
                f"{len(genes) - n_skill_genes} evaluated genes are not in the model's panel: "
                "left out of the MSE skill"
            )
            log.warning("%s", w)
            warnings.append(w)

    res = evaluate_slides(per_slide, train_mean)
    for summary in [*res["per_slide"].values(), res["pooled"]]:
        summary["pcc_per_gene"] = dict(zip(genes, summary.pop("pcc").tolist(), strict=True))
    result = {
        "command": "pixnet evaluate",
        "config": asdict(cfg),
        "outputs": {"json": str(json_path), "md": str(md_path)},
        "truth": {
            "target": TargetScale(target_sum=target_sum).describe(),
            "target_sum": target_sum,
            "panel_from": panel_from,
            "skill": (
                f"1 - MSE / MSE of the training-mean predictor, over {n_skill_genes} genes"
                if train_mean is not None
                else "not computed (no training means: pass --model)"
            ),
        },
        "pcc": (
            "per_slide: per-gene Pearson across the spots of each slide; pooled: across all "
            "spots of all slides; mean_over_slides: mean and sample std (ddof=1) of the "
            "per-slide values. PCC@F/S/M = first quartile/median/mean over genes whose truth "
            "and prediction vary (genes with constant truth are counted in n_genes_constant)"
        ),
        "genes": genes,
        "n_genes": len(genes),
        "genes_not_in_every_file": _listed(dropped),
        "files": files,
        "per_slide": res["per_slide"],
        "pooled": res["pooled"],
        "mean_over_slides": res["mean_over_slides"],
        "n_slides": res["n_slides"],
        "warnings": warnings,
    }
    result = json_safe(result)
    atomic_write_text(json_path, json.dumps(result, indent=2) + "\n", overwrite=cfg.overwrite)
    atomic_write_text(md_path, format_markdown(result), overwrite=cfg.overwrite)
    log.info("evaluation of %d slide(s) written to %s and %s", len(per_slide), json_path, md_path)
    return result


def _num(v: Any) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def format_markdown(result: dict[str, Any]) -> str:
    """The Markdown report of a :func:`run_evaluate` result (NaN already ``None``)."""
    head = ["slide", "MSE", "MAE", "PCC@F", "PCC@S", "PCC@M", "skill", "genes scored / constant"]
    lines = [
        "# PixNet evaluation",
        "",
        f"Scale: {result['truth']['target']}; truth panel: {result['truth']['panel_from']}.",
        f"Genes: {result['n_genes']}. Skill: {result['truth']['skill']}.",
        "PCC: per-gene Pearson across spots; PCC@F, PCC@S, PCC@M = first quartile, median, "
        "mean over genes. Slide rows: PCC across that slide's spots. *pooled*: across all "
        "spots of all slides. *mean ± std*: over the slide rows (sample std).",
        "",
        "| " + " | ".join([*head, "spots"]) + " |",
        "|" + "---|" * (len(head) + 1),
    ]

    def row(name: str, s: dict[str, Any]) -> str:
        cells = [name, *(_num(s[k]) for k in METRICS)]
        cells += [f"{s['n_genes_scored']} / {s['n_genes_constant']}", str(s["n_spots"])]
        return "| " + " | ".join(cells) + " |"

    for sid, s in result["per_slide"].items():
        lines.append(row(sid, s))
    lines.append(row("pooled", result["pooled"]))
    over = result["mean_over_slides"]
    cells = ["mean ± std"]
    for k in METRICS:
        m, sd = over[k]["mean"], over[k]["std"]
        cells.append("n/a" if m is None else f"{m:.4f} ± {_num(sd)}")
    lines.append("| " + " | ".join([*cells, "", ""]) + " |")
    if result["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in result["warnings"]]
    return "\n".join(lines) + "\n"


def _cmd_evaluate(args: argparse.Namespace) -> int:
    result = run_evaluate(dataclass_from_args(EvaluateConfig, args))
    print(f"wrote {result['outputs']['json']} and {result['outputs']['md']}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``pixnet evaluate`` to the command line's sub-command parser ``sub``."""
    add_command(
        sub,
        "evaluate",
        "score prediction .h5ad files against measured expression",
        _cmd_evaluate,
        EvaluateConfig,
    )
