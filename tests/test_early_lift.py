"Early-lift metrics (cxr_notebooks.metrics.early_lift): micro-AUROC, sensitivity at a fixed FPR, McClish's standardized partial AUC, the CI table."
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score, roc_curve
from cxr_notebooks.core import CXRDataError
from cxr_notebooks.metrics.classification import bootstrap_ci
from cxr_notebooks.metrics.early_lift import early_lift_table, micro_auroc, micro_auroc_ci, micro_auroc_difference_ci, sensitivity_at_fpr, standardized_partial_auc


@pytest.fixture(scope='module')
def scores():
    rng = np.random.default_rng(0)
    s = rng.random(500)
    y = (rng.random(500) < 0.2 + 0.5 * s).astype(int)
    return y, s


def test_micro_auroc_is_sklearns_micro_average_and_skips_unknown():
    rng = np.random.default_rng(1)
    y = (rng.random((200, 4)) < 0.3).astype(float); p = rng.random((200, 4)) + 0.3 * y
    assert micro_auroc(y, p) == pytest.approx(roc_auc_score(y, p, average='micro'), abs=1e-12)
    yn = y.copy(); yn[:20, 2] = np.nan
    keep = ~np.isnan(yn)
    assert micro_auroc(yn, p) == pytest.approx(roc_auc_score(yn[keep], p[keep]), abs=1e-12)
    with pytest.raises(CXRDataError, match='positives and negatives'): micro_auroc(np.zeros((3, 2)), np.ones((3, 2)))
    with pytest.raises(CXRDataError, match='shape'): micro_auroc(np.zeros((3, 2)), np.ones((3, 3)))


@pytest.mark.parametrize('groups', [None, np.arange(300) // 3])
def test_micro_auroc_ci_is_the_generic_bootstrap_vectorised(groups):
    "Same resamples (images, or patients) as `bootstrap_ci(metric=micro_auroc)`, so the same CI, through the vectorised AUROC path."
    rng = np.random.default_rng(2)
    y = (rng.random((300, 4)) < 0.2).astype(float); p = rng.random((300, 4)) + 0.4 * y
    y[:30, 1] = np.nan   # unknown labels are left out pair by pair
    slow, fast = bootstrap_ci(y, p, micro_auroc, 60, 3, groups), micro_auroc_ci(y, p, 60, 3, groups)
    assert fast.value == pytest.approx(micro_auroc(y, p), abs=1e-12)
    assert fast[:4] == pytest.approx(slow[:4], abs=1e-12) and fast.low < fast.value < fast.high and fast.note is None
    few = micro_auroc_ci(y[:20], p[:20], 60, 3)   # 20 images: fewer than 20 positive pairs, no CI
    assert few.value == pytest.approx(micro_auroc(y[:20], p[:20])) and np.isnan(few.low) and np.isnan(few.high) and 'too few to measure' in few.note
    with pytest.raises(CXRDataError, match='one patient id per image'): micro_auroc_ci(y, p, 5, groups=np.arange(4))
    with pytest.raises(CXRDataError, match='positives and negatives'): micro_auroc_ci(np.zeros((3, 2)), np.ones((3, 2)), 5)


@pytest.mark.parametrize('groups', [None, np.arange(300) // 3])
def test_micro_auroc_difference_ci_is_the_paired_generic_bootstrap(groups):
    "b minus a on the same images, both under each resample: the generic bootstrap of the difference, vectorised."
    rng = np.random.default_rng(4)
    y = (rng.random((300, 3)) < 0.25).astype(float); a = rng.random((300, 3)) + 0.2 * y; b = a + 0.3 * y * rng.random((300, 3))
    y[:20, 0] = np.nan
    k = y.shape[1]
    diff = lambda yt, ys: micro_auroc(yt[:, :k], ys[:, k:]) - micro_auroc(yt[:, :k], ys[:, :k])
    slow = bootstrap_ci(np.hstack([y, y]), np.hstack([a, b]), diff, 60, 5, groups)
    fast = micro_auroc_difference_ci(y, a, b, 60, 5, groups)
    assert fast.value == pytest.approx(micro_auroc(y, b) - micro_auroc(y, a), abs=1e-12)
    assert fast[:4] == pytest.approx(slow[:4], abs=1e-12) and 0 < fast.low < fast.value < fast.high
    with pytest.raises(CXRDataError, match='shape'): micro_auroc_difference_ci(y, a, b[:, :2], 5)


def test_sensitivity_at_fpr_on_a_hand_checked_curve():
    "5 negatives (0.1-0.5), 5 positives (0.45, 0.6-0.9): below FPR 0.2 TPR 0.8; at 0.2 threshold 0.45 reaches TPR 1."
    y = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1]); s = np.array([.1, .2, .3, .4, .5, .45, .6, .7, .8, .9])
    assert [sensitivity_at_fpr(y, s, f) for f in (0.01, 0.19, 0.2, 1.0)] == [0.8, 0.8, 1.0, 1.0]


def test_sensitivity_at_fpr_takes_the_lower_end_of_a_tie_segment():
    "A positive and a negative tied at 0.5: only a randomised classifier reaches the inside of the diagonal."
    y, s = np.array([0, 1, 0, 1]), np.array([0.2, 0.5, 0.5, 0.9])
    assert sensitivity_at_fpr(y, s, 0.25) == 0.5 and sensitivity_at_fpr(y, s, 0.5) == 1.0
    f, t, _ = roc_curve(y, s)
    assert np.interp(0.25, f, t) == 0.75   # what linear interpolation would report


def test_sensitivity_at_fpr_without_ties_reads_the_staircase(scores):
    y, s = scores
    f, t, _ = roc_curve(y, s, drop_intermediate=False)
    for fpr in (0.011, 0.05, 0.1, 0.333):
        assert sensitivity_at_fpr(y, s, fpr) == pytest.approx(np.interp(fpr, f, t), abs=1e-12)


@pytest.mark.parametrize('rounding', [None, 1, 2])
@pytest.mark.parametrize('max_fpr', [0.02, 0.05, 0.1, 0.5, 1.0])
def test_standardized_partial_auc_equals_sklearn(scores, rounding, max_fpr):
    "McClish's standardized pAUC is scikit-learn's roc_auc_score(max_fpr=...), with ties too; max_fpr=1 is the AUC."
    y, s = scores
    s = s if rounding is None else np.round(s, rounding)
    expected = roc_auc_score(y, s, max_fpr=max_fpr) if max_fpr < 1 else roc_auc_score(y, s)
    assert standardized_partial_auc(y, s, max_fpr) == pytest.approx(expected, abs=1e-12)


def test_standardized_partial_auc_extremes():
    y = np.array([0, 0, 1, 1])
    assert standardized_partial_auc(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert standardized_partial_auc(y, np.full(4, 0.5)) == pytest.approx(0.5)   # chance: the diagonal


@pytest.mark.parametrize('fn', [sensitivity_at_fpr, standardized_partial_auc])
def test_bad_fpr_and_one_class_are_refused(fn):
    y, s = np.array([0, 1, 0, 1]), np.array([.1, .9, .2, .8])
    for bad in (0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r'\(0, 1\]'): fn(y, s, bad)
    with pytest.raises(CXRDataError, match='positives and negatives'): fn(np.ones(4), s, 0.1)
    with pytest.raises(CXRDataError, match='NaN'): fn(np.array([0, 1, np.nan, 1]), s, 0.1)


def test_early_lift_table_values_cis_and_missing_classes():
    rng = np.random.default_rng(2)
    n = 300
    Y = (rng.random((n, 3)) < 0.3).astype(float); Y[:, 2] = 0   # class c has no positive
    S = np.c_[Y[:, 0] * 0.4 + rng.random(n), Y[:, 1] * 1.5 + rng.random(n), rng.random(n)]
    Y[:4, 1] = np.nan                                            # unknown labels are left out
    t = early_lift_table(Y, S, ['a', 'b', 'c'], n_resamples=40, seed=1, groups=np.arange(n) // 3)
    assert list(t.columns) == ['label', 'metric', 'value', 'low', 'high', 'n_skipped', 'note']
    assert t.query("label == 'c'")['note'].str.startswith('n = 300 (0 positive').all() and t.query("label != 'c'")['note'].isna().all()
    assert len(t) == 3 * 3 + 4 and set(t.metric) == {'sens@fpr0.05', 'sens@fpr0.1', 'spauc@0.1', 'auc'}
    w = t.pivot(index='label', columns='metric', values='value')
    assert w.loc['c', ['sens@fpr0.05', 'sens@fpr0.1', 'spauc@0.1']].isna().all()   # NaN, not zero
    assert w.loc['b', 'sens@fpr0.1'] == pytest.approx(sensitivity_at_fpr(Y[4:, 1], S[4:, 1], 0.1))
    assert w.loc['a', 'spauc@0.1'] == pytest.approx(standardized_partial_auc(Y[:, 0], S[:, 0], 0.1))
    assert w.loc['micro', 'auc'] == pytest.approx(micro_auroc(Y, S))
    micro_ci = t.query("label == 'micro' and metric == 'auc'")[['value', 'low', 'high']].iloc[0].tolist()
    assert micro_ci == pytest.approx(list(micro_auroc_ci(Y, S, 40, 1, np.arange(n) // 3)[:3]), abs=1e-12)   # images' patients resampled
    assert w.loc['b', 'spauc@0.1'] > w.loc['a', 'spauc@0.1']
    ok = t.dropna(subset=['value'])
    assert (ok['low'] <= ok['value']).all() and (ok['value'] <= ok['high']).all()
    again = early_lift_table(Y, S, ['a', 'b', 'c'], n_resamples=40, seed=1, groups=np.arange(n) // 3)
    pd.testing.assert_frame_equal(t, again)   # seeded
    other = early_lift_table(Y, S, ['a', 'b', 'c'], fprs=(0.2,), max_fpr=0.3, n_resamples=5, micro=False)
    assert set(other.metric) == {'sens@fpr0.2', 'spauc@0.3'} and 'micro' not in set(other.label)


def test_early_lift_table_checks_shapes():
    with pytest.raises(CXRDataError, match='K = len'): early_lift_table(np.zeros((4, 2)), np.zeros((4, 2)), ['a'])
    with pytest.raises(ValueError, match=r'\(0, 1\]'): early_lift_table(np.eye(4)[:, :2], np.eye(4)[:, :2], ['a', 'b'], fprs=(0,))


@pytest.mark.parametrize('groups', [None, 'patients'])
def test_vectorised_early_lift_equals_the_per_resample_loop(groups):
    "Issue 21: the table's CIs are the ones `bootstrap_ci` gave with a Python call per resample and metric, on fixed inputs."
    from cxr_notebooks.metrics.early_lift import _known
    rng = np.random.default_rng(7); n = 240
    y = (rng.random((n, 3)) < [0.3, 0.1, 0.2]).astype(float)
    s = np.round(np.c_[y[:, 0] * 0.6 + rng.random(n), y[:, 1] + rng.random(n), rng.random(n)], 2)   # ties
    y[:, 1] = 0; y[[5, 100], 1] = 1; y[:9, 2] = np.nan   # class b: two positives, absent from some resamples
    g = np.arange(n) // 3 if groups else None
    tab = early_lift_table(y, s, ['a', 'b', 'c'], fprs=(0.05, 0.2), max_fpr=0.15, n_resamples=150, seed=3, groups=g, minimum=0)   # the mechanism
    metrics = {'sens@fpr0.05': lambda a, b: sensitivity_at_fpr(a, b, 0.05), 'sens@fpr0.2': lambda a, b: sensitivity_at_fpr(a, b, 0.2),
               'spauc@0.15': lambda a, b: standardized_partial_auc(a, b, 0.15)}
    for label, cols in (('a', [0]), ('b', [1]), ('c', [2]), ('micro', [0, 1, 2])):
        keep = ~np.isnan(y[:, cols]).all(1)
        for m, fn in metrics.items():
            old = bootstrap_ci(y[keep][:, cols], s[keep][:, cols], lambda a, b, fn=fn: _known(fn, a, b), 150, 3,
                               None if g is None else g[keep], minimum=0)
            row = tab[(tab.label == label) & (tab.metric == m)].iloc[0]
            assert np.allclose([row.value, row.low, row.high], list(old[:3]), atol=1e-12, rtol=0), (label, m, row, old)
            assert row.n_skipped == old.n_skipped, (label, m)
    assert tab.query("label == 'b'")['n_skipped'].max() > 0   # the case of resamples without positives is exercised
    honest = early_lift_table(y, s, ['a', 'b', 'c'], fprs=(0.05, 0.2), max_fpr=0.15, n_resamples=150, seed=3, groups=g)
    b = honest.query("label == 'b'")   # by default: two positives are too few, the values stay and the CIs go
    assert b[['low', 'high']].isna().all().all() and b['note'].str.startswith('n = 240 (2 positive, 238 negative)').all()
    pd.testing.assert_frame_equal(honest.query("label == 'a'").drop(columns='note'), tab.query("label == 'a'").drop(columns='note'))
