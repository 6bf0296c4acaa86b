"""Targets as in the paper: top-k genes by mean expression, per-spot normalisation, log.

The fitted :class:`GenePanel` (gene list and constants) is saved with the model and
applied unchanged at prediction and evaluation time.

Target of spot ``n`` and gene ``g``: ``log1p(target_sum * counts[n, g] / total[n])``,
where ``total[n]`` is the spot's total count over *all* genes of its sample.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from pixnet.errors import PixNetInputError
from pixnet.io.sample import Sample

log = logging.getLogger(__name__)

DEFAULT_TARGET_SUM = 1e4


@dataclass
class GenePanel:
    """The genes a model predicts and how their targets are made.

    Attributes:
        genes: gene names, in model output order.
        target_sum: per-spot normalisation constant (counts per spot after scaling).
        mean_targets: training mean of each gene's target (the training-mean predictor,
            and the head's initial bias).
        fitted_on: sample ids the panel was chosen on.
        missing: genes of the panel absent from some training samples, with those ids.
    """

    genes: list[str]
    target_sum: float = DEFAULT_TARGET_SUM
    mean_targets: list[float] = field(default_factory=list)
    fitted_on: list[str] = field(default_factory=list)
    missing: dict[str, list[str]] = field(default_factory=dict)

    @property
    def n_genes(self) -> int:
        return len(self.genes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GenePanel:
        return cls(**d)

    def transform(self, sample: Sample) -> np.ndarray:
        """Targets ``(N, G)`` float32 for ``sample``; genes it lacks are 0 (logged)."""
        if sample.counts is None:
            raise PixNetInputError(
                sample.sample_id, "sample has no measured counts", "targets need expression"
            )
        return self.transform_counts(sample.counts, sample.gene_names, sample.sample_id)

    def transform_counts(
        self, counts: sp.spmatrix, gene_names: list[str], name: str = "counts"
    ) -> np.ndarray:
        """Targets ``(N, G)`` float32 of raw ``counts (N, n_genes)`` with columns
        ``gene_names``: ``log1p(target_sum * counts / row total)``; genes it lacks are 0.

        Rows may be single spots or regions (summed members' counts, see
        :mod:`pixnet.data.regions`): a region is normalised like one spot.
        """
        counts = sp.csr_matrix(counts)
        total = np.asarray(counts.sum(axis=1)).ravel().astype(np.float64)
        index = {g: i for i, g in enumerate(gene_names)}
        cols = [index.get(g, -1) for g in self.genes]
        lacking = [g for g, c in zip(self.genes, cols, strict=True) if c < 0]
        if lacking:
            log.warning(
                "%s: %d of %d panel genes not measured (set to 0), e.g. %s",
                name,
                len(lacking),
                len(self.genes),
                ", ".join(lacking[:5]),
            )
        safe_cols = np.array([max(c, 0) for c in cols], dtype=np.int64)
        sub = counts[:, safe_cols].toarray().astype(np.float64)
        sub[:, np.array(cols) < 0] = 0.0
        with np.errstate(divide="ignore", invalid="ignore"):
            norm = np.where(total[:, None] > 0, sub / total[:, None], 0.0)
        return np.log1p(self.target_sum * norm).astype(np.float32)


def _normalised_means(sample: Sample) -> tuple[dict[str, float], int]:
    assert sample.counts is not None
    total = np.asarray(sample.counts.sum(axis=1)).ravel()
    keep = total > 0
    scale = sp.diags(np.where(keep, 1.0 / np.maximum(total, 1e-12), 0.0))
    frac = scale @ sample.counts
    mean = np.asarray(frac.sum(axis=0)).ravel() / max(int(keep.sum()), 1)
    return dict(zip(sample.gene_names, mean.tolist(), strict=True)), int(keep.sum())


def fit_gene_panel(
    samples: Sequence[Sample],
    n_genes: int = 250,
    target_sum: float = DEFAULT_TARGET_SUM,
    require_all: bool = True,
) -> GenePanel:
    """Choose the ``n_genes`` genes with the highest mean normalised expression.

    Means are taken over all spots of ``samples`` pooled (each spot's counts divided by
    its total). With ``require_all`` (default) only genes measured in every sample are
    eligible; how many were excluded for that reason is logged. Without it a gene
    absent from a sample counts as 0 there and is recorded in ``panel.missing``.
    """
    if not samples:
        raise PixNetInputError(None, "no training samples given", "pass at least one sample")
    if n_genes < 1:
        raise PixNetInputError(None, f"n_genes={n_genes} must be at least 1")
    per_sample = []
    n_spots = []
    for s in samples:
        if s.counts is None:
            raise PixNetInputError(s.sample_id, "training sample has no counts")
        means, n = _normalised_means(s)
        per_sample.append(means)
        n_spots.append(n)
    union = set().union(*(m.keys() for m in per_sample))
    common = set.intersection(*(set(m.keys()) for m in per_sample))
    eligible = common if require_all else union
    if require_all and len(union) > len(common):
        log.info(
            "%d genes are not measured in every training sample and are not eligible",
            len(union) - len(common),
        )
    total_spots = max(sum(n_spots), 1)
    pooled = {
        g: sum(m.get(g, 0.0) * n for m, n in zip(per_sample, n_spots, strict=True)) / total_spots
        for g in eligible
    }
    ranked = sorted(pooled, key=lambda g: (-pooled[g], g))
    if len(ranked) < n_genes:
        log.warning("only %d eligible genes; asked for %d", len(ranked), n_genes)
    genes = ranked[:n_genes]
    missing = {
        g: [s.sample_id for s, m in zip(samples, per_sample, strict=True) if g not in m]
        for g in genes
    }
    missing = {g: ids for g, ids in missing.items() if ids}
    if missing:
        log.warning("%d panel genes are missing from some training samples", len(missing))
    panel = GenePanel(
        genes=genes,
        target_sum=target_sum,
        fitted_on=[s.sample_id for s in samples],
        missing=missing,
    )
    targets = np.concatenate([panel.transform(s) for s in samples], axis=0)
    panel.mean_targets = targets.mean(axis=0).astype(float).tolist()
    return panel
