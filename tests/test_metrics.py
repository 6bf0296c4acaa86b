"""Evaluation metrics: PCC against scipy, excluded genes, NaN handling, summaries, skill."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import pearsonr

from pixnet.eval.metrics import evaluate_slides, mse_skill, pearson_per_gene, summarise

T4 = np.array([1.0, 2.0, 3.0, 4.0])


def _known() -> tuple[np.ndarray, np.ndarray]:
    """4 spots x 5 genes with PCC -1, 0, 0.8, 1 and one gene with constant truth."""
    truth = np.c_[T4, T4, T4, T4, np.full(4, 2.5)]
    pred = np.c_[-T4, [1.0, -1.0, -1.0, 1.0], [1.0, 3.0, 2.0, 4.0], 2 * T4 + 7, T4]
    return pred, truth


def test_pearson_matches_scipy_on_random_genes() -> None:
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(40, 6))
    pred = 0.5 * truth + rng.normal(size=(40, 6))
    r = pearson_per_gene(pred, truth)
    expected = [pearsonr(pred[:, g], truth[:, g]).statistic for g in range(6)]
    np.testing.assert_allclose(r, expected, rtol=1e-12, atol=1e-12)


def test_pearson_known_values_and_constant_gene_is_nan() -> None:
    pred, truth = _known()
    r = pearson_per_gene(pred, truth)
    np.testing.assert_allclose(r[:4], [-1.0, 0.0, 0.8, 1.0], atol=1e-12)
    assert np.isnan(r[4])


def test_pearson_drops_nonfinite_pairs_per_gene() -> None:
    rng = np.random.default_rng(1)
    truth = rng.normal(size=(30, 3))
    pred = truth + rng.normal(size=(30, 3))
    pred[[2, 7], 0] = np.nan
    truth[5, 0] = np.inf
    truth[11, 1] = np.nan
    pred[:, 2] = np.nan  # a whole gene without prediction
    pred[0, 2] = pred[1, 2] = 1.0  # two pairs are too few
    r = pearson_per_gene(pred, truth)
    keep0 = np.setdiff1d(np.arange(30), [2, 5, 7])
    keep1 = np.setdiff1d(np.arange(30), [11])
    assert r[0] == pytest.approx(pearsonr(pred[keep0, 0], truth[keep0, 0]).statistic, abs=1e-12)
    assert r[1] == pytest.approx(pearsonr(pred[keep1, 1], truth[keep1, 1]).statistic, abs=1e-12)
    assert np.isnan(r[2])
    s = summarise(pred, truth)
    assert s["n_genes_too_few"] == 1 and s["n_genes_scored"] == 2
    assert s["n_pairs_dropped"] == 3 + 1 + 28
    ok = np.isfinite(pred) & np.isfinite(truth)
    assert s["MSE"] == pytest.approx(np.mean((pred - truth)[ok] ** 2))
    assert s["MAE"] == pytest.approx(np.mean(np.abs(pred - truth)[ok]))


def test_nan_rows_are_dropped() -> None:
    pred, truth = _known()
    pred_nan = np.vstack([pred, np.full((2, 5), np.nan)])
    truth_nan = np.vstack([truth, np.full((2, 5), 9.0)])
    np.testing.assert_allclose(
        pearson_per_gene(pred_nan, truth_nan), pearson_per_gene(pred, truth), equal_nan=True
    )
    a, b = summarise(pred_nan, truth_nan), summarise(pred, truth)
    for k in ("MSE", "MAE", "PCC@F", "PCC@S", "PCC@M"):
        assert a[k] == pytest.approx(b[k])
    assert a["n_spots"] == 6 and a["n_pairs_dropped"] == 10


def test_summary_quartile_median_mean_and_counts_exact() -> None:
    pred, truth = _known()
    s = summarise(pred, truth)
    # PCCs -1, 0, 0.8, 1: linear-interpolated first quartile at position 0.75
    assert s["PCC@F"] == pytest.approx(-0.25)
    assert s["PCC@S"] == pytest.approx(0.4)
    assert s["PCC@M"] == pytest.approx(0.2)
    assert s["n_genes_scored"] == 4
    assert s["n_genes_constant"] == 1
    assert s["n_genes_pred_constant"] == 0
    assert s["n_spots"] == 4 and s["n_genes"] == 5
    assert s["MSE"] == pytest.approx(np.mean((pred - truth) ** 2))
    assert np.isnan(s["skill"])  # no training means


def test_constant_prediction_is_not_scored_and_counted() -> None:
    truth = np.c_[T4, T4 * 2]
    pred = np.c_[np.full(4, 3.0), T4]
    s = summarise(pred, truth)
    assert s["n_genes_pred_constant"] == 1 and s["n_genes_constant"] == 0
    assert s["n_genes_scored"] == 1 and s["PCC@M"] == pytest.approx(1.0)


def test_skill_zero_for_mean_predictor_one_for_perfect() -> None:
    rng = np.random.default_rng(2)
    truth = rng.normal(2.0, 1.0, size=(50, 4))
    mean = np.array([1.5, 2.0, 2.5, 3.0])
    assert mse_skill(np.tile(mean, (50, 1)), truth, mean) == pytest.approx(0.0, abs=1e-12)
    assert mse_skill(truth, truth, mean) == pytest.approx(1.0)
    half = 0.5 * (truth + mean)  # halfway to the truth: a quarter of the squared error
    assert mse_skill(half, truth, mean) == pytest.approx(0.75)
    s = summarise(truth, truth, mean)
    assert s["skill"] == pytest.approx(1.0)


def test_skill_leaves_out_genes_without_mean() -> None:
    truth = np.c_[T4, T4]
    pred = np.c_[T4 + 1.0, T4 + 100.0]
    mean = np.array([2.5, np.nan])
    # gene 0 only: MSE 1, baseline MSE mean((T4 - 2.5)^2) = 1.25
    assert mse_skill(pred, truth, mean) == pytest.approx(1 - 1 / 1.25)


def test_pooled_differs_from_per_slide() -> None:
    # within each slide prediction and truth are anti-correlated, but slide B is higher
    # in both: pooled over spots the correlation is positive (Simpson's paradox)
    t = np.array([[0.0], [1.0], [2.0]])
    slides = {"A": (2.0 - t, t), "B": (12.0 - t, t + 10.0)}
    res = evaluate_slides(slides)
    assert set(res) == {"per_slide", "pooled", "mean_over_slides", "n_slides"}
    assert res["per_slide"]["A"]["PCC@M"] == pytest.approx(-1.0)
    assert res["per_slide"]["B"]["PCC@M"] == pytest.approx(-1.0)
    pooled_r = pearsonr(np.r_[2.0 - t, 12.0 - t].ravel(), np.r_[t, t + 10].ravel()).statistic
    assert res["pooled"]["PCC@M"] == pytest.approx(pooled_r) and pooled_r > 0.9
    assert res["pooled"]["n_spots"] == 6
    over = res["mean_over_slides"]["PCC@M"]
    assert over["mean"] == pytest.approx(-1.0) and over["std"] == pytest.approx(0.0)
    assert over["n"] == 2 and res["n_slides"] == 2


def test_evaluate_slides_mean_std_and_pooled_skill() -> None:
    truth_a = np.c_[T4, T4[::-1]]
    truth_b = truth_a + 1.0
    mean = np.array([3.0, 3.0])
    res = evaluate_slides({"A": (truth_a + 0.5, truth_a), "B": (truth_b, truth_b)}, mean)
    mse = [res["per_slide"][k]["MSE"] for k in ("A", "B")]
    assert mse == pytest.approx([0.25, 0.0])
    assert res["mean_over_slides"]["MSE"]["mean"] == pytest.approx(0.125)
    assert res["mean_over_slides"]["MSE"]["std"] == pytest.approx(np.std([0.25, 0.0], ddof=1))
    pooled_truth = np.r_[truth_a, truth_b]
    pooled_pred = np.r_[truth_a + 0.5, truth_b]
    assert res["pooled"]["skill"] == pytest.approx(mse_skill(pooled_pred, pooled_truth, mean))
    assert res["pooled"]["MSE"] == pytest.approx(0.125)


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="must both be"):
        pearson_per_gene(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="different gene counts"):
        evaluate_slides({"A": (np.zeros((3, 2)),) * 2, "B": (np.zeros((3, 3)),) * 2})
