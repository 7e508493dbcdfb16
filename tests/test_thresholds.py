"Contract of cxr_notebooks.metrics.thresholds: threshold choice and thresholded metrics with bootstrap CIs (seed 004 Sec. 3.5)."
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score, precision_recall_fscore_support, roc_auc_score
from cxr_notebooks.core import CXRDataError
from cxr_notebooks.metrics.classification import youden_threshold
from cxr_notebooks.metrics.thresholds import (THRESHOLD_METHODS, choose_thresholds, f1_optimal_threshold,
                                              thresholded_metrics)

LABELS = ['A', 'B', 'C']


@pytest.fixture
def scores():
    "Three classes of informative but badly calibrated scores (all below 0.5) for 300 images of 100 patients."
    rng = np.random.default_rng(0)
    y = (rng.random((300, 3)) < [0.1, 0.3, 0.5]).astype(float)
    logits = 1.5 * y + rng.normal(size=y.shape) - 5
    return y, 1 / (1 + np.exp(-logits)), np.repeat(np.arange(100), 3)


def test_f1_optimal_threshold_maximises_f1_over_all_cuts(scores):
    y, p, _ = scores
    t = f1_optimal_threshold(y[:, 1], p[:, 1])
    best = f1_score(y[:, 1], p[:, 1] >= t)
    assert all(f1_score(y[:, 1], p[:, 1] >= c) <= best + 1e-12 for c in np.unique(p[:, 1]))
    assert isinstance(t, float)
    np.testing.assert_array_equal(f1_optimal_threshold(y, p), [f1_optimal_threshold(y[:, k], p[:, k]) for k in range(3)])


def test_choose_thresholds_methods(scores):
    y, p, _ = scores
    assert THRESHOLD_METHODS == ('fixed', 'youden', 'f1')
    np.testing.assert_array_equal(choose_thresholds(y, p), [0.5] * 3)
    np.testing.assert_array_equal(choose_thresholds(y, p, 'fixed', fixed=0.3), [0.3] * 3)
    np.testing.assert_array_equal(choose_thresholds(y, p, 'youden'), youden_threshold(y, p))
    np.testing.assert_array_equal(choose_thresholds(y, p, 'f1'), f1_optimal_threshold(y, p))
    assert choose_thresholds(y[:, 0], p[:, 0], 'f1').shape == (1,)
    with pytest.raises(ValueError, match="method='otsu'; expected one of"):
        choose_thresholds(y, p, 'otsu')


def test_choose_thresholds_single_class_column(scores):
    y, p, _ = scores
    y = y.copy(); y[:, 2] = 0
    with pytest.raises(CXRDataError, match="class '2'"):
        choose_thresholds(y, p, 'f1')
    with pytest.warns(UserWarning, match=r'column\(s\) \[2\]'):
        t = choose_thresholds(y, p, 'youden', fixed=0.4, fallback_to_fixed=True)
    assert t[2] == 0.4 and t[0] == youden_threshold(y[:, 0], p[:, 0])


def test_point_estimates_equal_sklearn(scores):
    y, p, g = scores
    thr = choose_thresholds(y, p, 'f1')
    tab = thresholded_metrics(y, p, thr, LABELS, n_resamples=20, groups=g)
    assert list(tab.index) == LABELS + ['macro', 'micro']
    for m in ('auroc', 'f1', 'precision', 'recall'):
        assert {m, f'{m}_low', f'{m}_high'} <= set(tab.columns)
    pred = p >= thr
    pr, rc, f1, support = precision_recall_fscore_support(y, pred, average=None, zero_division=0)
    np.testing.assert_allclose(tab.loc[LABELS, ['precision', 'recall', 'f1']].to_numpy(), np.c_[pr, rc, f1])
    np.testing.assert_array_equal(tab.loc[LABELS, 'positives'], support)
    np.testing.assert_allclose(tab.loc[LABELS, 'auroc'], [roc_auc_score(y[:, k], p[:, k]) for k in range(3)])
    for avg in ('macro', 'micro'):
        ref = precision_recall_fscore_support(y, pred, average=avg, zero_division=0)[:3]
        np.testing.assert_allclose(tab.loc[avg, ['precision', 'recall', 'f1']].to_numpy(float), ref)
        assert tab.loc[avg, 'auroc'] == pytest.approx(roc_auc_score(y, p, average=avg))


def test_bootstrap_intervals_bracket_and_are_reproducible(scores):
    y, p, g = scores
    a = thresholded_metrics(y, p, 0.05, LABELS, n_resamples=200, seed=3, groups=g)
    b = thresholded_metrics(y, p, 0.05, LABELS, n_resamples=200, seed=3, groups=g)
    pd.testing.assert_frame_equal(a, b)
    for m in ('auroc', 'f1', 'precision', 'recall'):
        assert (a[f'{m}_low'] <= a[m] + 1e-12).all() and (a[m] <= a[f'{m}_high'] + 1e-12).all(), m
        assert (a[f'{m}_low'] < a[f'{m}_high']).all(), m
    c = thresholded_metrics(y, p, 0.05, LABELS, n_resamples=200, seed=4, groups=g)
    assert not np.allclose(a['f1_low'], c['f1_low'])


def test_one_resample_is_sklearn_on_the_resampled_images(scores, monkeypatch):
    "The vectorised bootstrap (weights = how often each image is drawn) equals sklearn on the repeated images."
    import cxr_notebooks.metrics.thresholds as T
    y, p, _ = scores
    counts = np.random.default_rng(1).multinomial(len(y), np.full(len(y), 1 / len(y)), size=1)
    monkeypatch.setattr(T, '_bootstrap_counts', lambda n, b, seed, groups=None: iter([counts]))
    tab = T.thresholded_metrics(y, p, 0.05, LABELS, n_resamples=1)
    take = np.repeat(np.arange(len(y)), counts[0])
    ref = precision_recall_fscore_support(y[take], p[take] >= 0.05, average=None, zero_division=0)
    np.testing.assert_allclose(tab.loc[LABELS, 'f1_low'], ref[2])
    np.testing.assert_allclose(tab.loc[LABELS, 'precision_low'], ref[0])
    np.testing.assert_allclose(tab.loc[LABELS, 'auroc_low'], [roc_auc_score(y[take, k], p[take, k]) for k in range(3)])
    mic = precision_recall_fscore_support(y[take], p[take] >= 0.05, average='micro', zero_division=0)
    assert tab.loc['micro', 'f1_high'] == pytest.approx(mic[2])
    assert tab.loc['micro', 'auroc_high'] == pytest.approx(roc_auc_score(y[take], p[take], average='micro'))


def test_uncalibrated_scores_fixed_half_gives_zero_f1(scores):
    y, p, _ = scores
    half = thresholded_metrics(y, p, choose_thresholds(y, p), LABELS, n_resamples=10)
    assert (half['f1'] == 0).all() and (half['precision'] == 0).all()
    tuned = thresholded_metrics(y, p, choose_thresholds(y[:150], p[:150], 'f1'), LABELS, n_resamples=10)
    assert (tuned['f1'] > 0.2).all()


def test_class_without_positives_is_nan_not_a_crash(scores):
    y, p, _ = scores
    y = y.copy(); y[:, 0] = 0
    tab = thresholded_metrics(y, p, 0.05, LABELS, n_resamples=20)
    assert np.isnan(tab.loc['A', ['auroc', 'auroc_low', 'recall', 'recall_high']].to_numpy(float)).all()
    assert tab.loc['macro', 'auroc'] == pytest.approx(np.mean([roc_auc_score(y[:, k], p[:, k]) for k in (1, 2)]))
    assert tab.loc['A', 'positives'] == 0


def test_bad_arguments(scores):
    y, p, _ = scores
    with pytest.raises(ValueError, match='2 thresholds for 3 columns'):
        thresholded_metrics(y, p, [0.1, 0.2], LABELS, n_resamples=5)
    with pytest.raises(ValueError, match='2 labels'):
        thresholded_metrics(y, p, 0.1, ['A', 'B'], n_resamples=5)
    with pytest.raises(CXRDataError, match='groups has 3 values for 300 samples'):
        thresholded_metrics(y, p, 0.05, LABELS, n_resamples=5, groups=[1, 2, 3])
    with pytest.raises(CXRDataError, match='NaN'):
        thresholded_metrics(np.where(y == 1, np.nan, y), p, 0.05, LABELS, n_resamples=5)
