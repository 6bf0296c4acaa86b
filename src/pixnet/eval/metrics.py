"""Evaluation metrics (SPEC section 3), as pure NumPy functions.

All arrays are ``(N, G)``: ``N`` spots, ``G`` genes, on the normalised log scale of the
targets (``log1p(target_sum * count / spot total)``). Non-finite entries (NaN, inf) in
either array are dropped pair by pair: a spot with a NaN prediction for one gene still
counts for the other genes.

* MSE and MAE are means over all finite (prediction, truth) pairs.
* PCC is computed per gene across spots; a gene whose truth has no variance is excluded
  from the PCC summaries and counted (``n_genes_constant``), as is a gene whose
  prediction has no variance (``n_genes_pred_constant``, e.g. the training-mean
  predictor) or with fewer than ``min_pairs`` finite pairs (``n_genes_too_few``).
* PCC@F, PCC@S, PCC@M are the first quartile (``numpy.percentile`` with linear
  interpolation), the median and the mean of the per-gene PCCs of the scored genes.
* The MSE skill is ``1 - MSE(pred) / MSE(training-mean predictor)``: 0 for the mean
  predictor, 1 for a perfect prediction, negative when worse than the mean.

The training loss has its own differentiable PCC (:func:`pixnet.ops.losses.pearson_per_gene`,
0 for constant genes); this module is for reporting, where undefined stays undefined.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

MIN_PAIRS = 3
"""Fewest finite (prediction, truth) pairs for a gene's PCC (two points always give +-1)."""

METRICS = ("MSE", "MAE", "PCC@F", "PCC@S", "PCC@M", "skill")
"""Metric keys of :func:`summarise`, in table order."""

COUNTS = ("n_genes_scored", "n_genes_constant", "n_genes_pred_constant", "n_genes_too_few")


def _as_pair(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    if p.ndim == 1:
        p = p[:, None]
    if t.ndim == 1:
        t = t[:, None]
    if p.shape != t.shape or p.ndim != 2:
        raise ValueError(f"pred {p.shape} and truth {t.shape} must both be (N, G)")
    return p, t


def _gene_stats(
    p: np.ndarray, t: np.ndarray, min_pairs: int
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Per-gene PCC ``(G,)`` and boolean masks ``(G,)`` of why a gene has none."""
    ok = np.isfinite(p) & np.isfinite(t)
    n = ok.sum(axis=0)
    too_few = n < min_pairs
    with np.errstate(all="ignore"):
        # constancy tested exactly (max == min over the finite pairs), not by a threshold
        t_const = np.where(ok, t, -np.inf).max(axis=0, initial=-np.inf) == np.where(
            ok, t, np.inf
        ).min(axis=0, initial=np.inf)
        p_const = np.where(ok, p, -np.inf).max(axis=0, initial=-np.inf) == np.where(
            ok, p, np.inf
        ).min(axis=0, initial=np.inf)
        nn = np.maximum(n, 1)
        dp = np.where(ok, p - np.where(ok, p, 0.0).sum(axis=0) / nn, 0.0)
        dt = np.where(ok, t - np.where(ok, t, 0.0).sum(axis=0) / nn, 0.0)
        r = (dp * dt).sum(axis=0) / np.sqrt((dp * dp).sum(axis=0) * (dt * dt).sum(axis=0))
    t_const &= ~too_few
    p_const &= ~too_few & ~t_const
    undefined = too_few | t_const | p_const | ~np.isfinite(r)
    r = np.where(undefined, np.nan, np.clip(r, -1.0, 1.0))
    return r, {"too_few": too_few, "truth_constant": t_const, "pred_constant": p_const}


def pearson_per_gene(pred: np.ndarray, truth: np.ndarray, min_pairs: int = MIN_PAIRS) -> np.ndarray:
    """Pearson correlation across spots for each gene, ignoring non-finite pairs.

    Args:
        pred: ``(N, G)`` predictions.
        truth: ``(N, G)`` measured targets, same scale.
        min_pairs: fewest finite pairs for a gene to be scored.
    Returns:
        ``(G,)`` float64 in [-1, 1]; NaN for a gene whose truth or prediction is constant
        over its finite pairs, or with fewer than ``min_pairs`` finite pairs.
    """
    p, t = _as_pair(pred, truth)
    return _gene_stats(p, t, min_pairs)[0]


def _finite_mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")


def mse_skill(
    pred: np.ndarray,
    truth: np.ndarray,
    train_mean: np.ndarray,
) -> float:
    """``1 - MSE(pred) / MSE(train_mean)`` over the same finite entries.

    Args:
        pred, truth: ``(N, G)``.
        train_mean: ``(G,)`` training mean of each gene's target (the training-mean
            predictor); genes with a non-finite mean are left out of both MSEs.
    Returns:
        The skill; NaN when no entry is finite or the mean predictor is exact.
    """
    p, t = _as_pair(pred, truth)
    m = np.asarray(train_mean, dtype=np.float64).ravel()
    if m.shape != (t.shape[1],):
        raise ValueError(f"train_mean has shape {m.shape}, expected ({t.shape[1]},)")
    ok = np.isfinite(p) & np.isfinite(t) & np.isfinite(m)[None, :]
    mse = _finite_mean((p - t)[ok] ** 2)
    base = _finite_mean((np.broadcast_to(m, t.shape) - t)[ok] ** 2)
    if not np.isfinite(base) or base == 0.0:
        return float("nan")
    return 1.0 - mse / base


def summarise(
    pred: np.ndarray,
    truth: np.ndarray,
    train_mean: np.ndarray | None = None,
    min_pairs: int = MIN_PAIRS,
) -> dict[str, Any]:
    """All metrics of one set of spots.

    Args:
        pred, truth: ``(N, G)`` on the targets' scale.
        train_mean: optional ``(G,)`` training means, for ``skill``.
        min_pairs: fewest finite pairs for a gene's PCC.
    Returns:
        ``MSE``, ``MAE`` (over finite pairs), ``PCC@F``, ``PCC@S``, ``PCC@M`` (first
        quartile, median, mean over the scored genes; NaN if none), ``skill`` (NaN
        without ``train_mean``), ``n_spots``, ``n_genes``, ``n_genes_scored``,
        ``n_genes_constant`` (truth without variance), ``n_genes_pred_constant``,
        ``n_genes_too_few``, ``n_pairs_dropped`` (non-finite entries) and ``pcc``
        (``(G,)`` per-gene PCC, NaN where undefined).
    """
    p, t = _as_pair(pred, truth)
    r, why = _gene_stats(p, t, min_pairs)
    ok = np.isfinite(p) & np.isfinite(t)
    err = (p - t)[ok]
    scored = r[np.isfinite(r)]
    has_pcc = scored.size > 0
    return {
        "MSE": _finite_mean(err**2),
        "MAE": _finite_mean(np.abs(err)),
        "PCC@F": float(np.percentile(scored, 25)) if has_pcc else float("nan"),
        "PCC@S": float(np.median(scored)) if has_pcc else float("nan"),
        "PCC@M": float(scored.mean()) if has_pcc else float("nan"),
        "skill": mse_skill(p, t, train_mean) if train_mean is not None else float("nan"),
        "n_spots": int(t.shape[0]),
        "n_genes": int(t.shape[1]),
        "n_genes_scored": int(scored.size),
        "n_genes_constant": int(why["truth_constant"].sum()),
        "n_genes_pred_constant": int(why["pred_constant"].sum()),
        "n_genes_too_few": int(why["too_few"].sum()),
        "n_pairs_dropped": int((~ok).sum()),
        "pcc": r,
    }


def evaluate_slides(
    per_slide: Mapping[str, tuple[np.ndarray, np.ndarray]],
    train_mean: np.ndarray | None = None,
    min_pairs: int = MIN_PAIRS,
) -> dict[str, Any]:
    """Metrics per slide, pooled over all spots, and mean and std over slides.

    Args:
        per_slide: slide id -> ``(pred, truth)``, each ``(N_s, G)`` with the same genes
            (columns) in every slide.
        train_mean: optional ``(G,)`` training means, for the skill.
        min_pairs: fewest finite pairs for a gene's PCC.
    Returns:
        ``per_slide``: slide id -> :func:`summarise` of that slide's spots (PCC across
        the spots of the slide); ``pooled``: :func:`summarise` of all spots of all slides
        concatenated (PCC across all spots, so differences between slides count);
        ``mean_over_slides``: metric -> ``{"mean", "std", "n"}`` over the slides where
        the metric is finite (``std`` is the sample std, ddof=1; NaN for one slide);
        ``n_slides``.
    """
    if not per_slide:
        raise ValueError("per_slide is empty: no slides to evaluate")
    pairs = {k: _as_pair(p, t) for k, (p, t) in per_slide.items()}
    widths = {k: t.shape[1] for k, (_, t) in pairs.items()}
    if len(set(widths.values())) != 1:
        raise ValueError(f"slides have different gene counts {widths}; align genes first")
    slides = {k: summarise(p, t, train_mean, min_pairs) for k, (p, t) in pairs.items()}
    pooled = summarise(
        np.concatenate([p for p, _ in pairs.values()], axis=0),
        np.concatenate([t for _, t in pairs.values()], axis=0),
        train_mean,
        min_pairs,
    )
    over: dict[str, dict[str, float | int]] = {}
    for key in METRICS:
        vals = np.array([s[key] for s in slides.values()], dtype=np.float64)
        vals = vals[np.isfinite(vals)]
        over[key] = {
            "mean": float(vals.mean()) if vals.size else float("nan"),
            "std": float(vals.std(ddof=1)) if vals.size > 1 else float("nan"),
            "n": int(vals.size),
        }
    return {
        "per_slide": slides,
        "pooled": pooled,
        "mean_over_slides": over,
        "n_slides": len(slides),
    }


def grid_anisotropy(centres_px: np.ndarray, side_px: float, values: np.ndarray) -> dict[str, float]:
    """How much a map changes between adjacent rows against adjacent columns of square bins.

    ``centres_px (N, 2)`` (x, y) are bin centres on a grid of pitch ``side_px`` (any subset
    of it); ``values (N, G)``. For every pair of bins that are vertical neighbours, and
    every pair that are horizontal neighbours, the absolute difference per gene is averaged.
    Returns ``row_step`` (vertical neighbours, i.e. between rows), ``col_step``
    (horizontal) and their ratio ``ratio`` (mean over genes of each gene's ratio); an
    isotropic field gives a ratio near 1, horizontal stripes a ratio above 1.
    """
    c = np.asarray(centres_px, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    ij = np.floor(c / float(side_px)).astype(np.int64)  # (column, row) index of each bin
    lookup = {(int(a), int(b)): n for n, (a, b) in enumerate(ij)}

    def steps(dx: int, dy: int) -> np.ndarray:
        pairs = [
            (n, lookup[(a + dx, b + dy)])
            for n, (a, b) in enumerate(ij.tolist())
            if (a + dx, b + dy) in lookup
        ]
        if not pairs:
            return np.full(v.shape[1], np.nan)
        p = np.asarray(pairs)
        return np.nanmean(np.abs(v[p[:, 0]] - v[p[:, 1]]), axis=0)

    rows, cols = steps(0, 1), steps(1, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = rows / cols

    def mean(x: np.ndarray) -> float:
        x = x[np.isfinite(x)]
        return float(x.mean()) if x.size else float("nan")

    return {"row_step": mean(rows), "col_step": mean(cols), "ratio": mean(ratio)}
