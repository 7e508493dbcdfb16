"Contracts, pinned facts and error paths of cxr_notebooks.metrics.classification."
import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score, f1_score

from cxr_notebooks.core import CXRDataError, embedded_data_dir
from cxr_notebooks.metrics.classification import (CI, DeLongResult, bootstrap_ci, classification_report_table, confusion_metrics,
                                   delong_auc_cov, delong_ci, delong_test, discriminant_power, macro_auroc,
                                   one_vs_rest_metrics, per_class_auroc, per_class_auroc_ci, youden_index,
                                   youden_threshold, binary_confusion_metrics)


@pytest.fixture
def binary():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    return y, np.round(y + rng.normal(0, 1.2, 400), 1)  # rounding makes ties


def test_auroc_errors_name_the_problem():
    y = np.array([[0, 1], [1, 1], [0, 1]])
    with pytest.raises(CXRDataError, match="'Edema'"): per_class_auroc(y, np.ones((3, 2)), ['Mass', 'Edema'])
    with pytest.raises(CXRDataError, match='row 1, column 0'): macro_auroc(y, [[.1, .2], [np.nan, .1], [.3, .3]])
    assert np.isnan(per_class_auroc(y, np.random.rand(3, 2), skip_single_class=True).iloc[1])


def test_report_table_matches_sklearn(binary):
    y, s = binary
    y2 = np.c_[y, 1 - y]; s2 = np.c_[s, -s]
    rep = classification_report_table(y2, s2, ['x', 'y'], threshold=[0.5, -0.5])
    assert list(rep.index) == ['x', 'y', 'micro avg', 'macro avg', 'weighted avg']
    assert rep.loc['x', 'auroc'] == pytest.approx(roc_auc_score(y, s))
    assert rep.loc['macro avg', 'f1'] == pytest.approx(f1_score(y2, s2 >= [0.5, -0.5], average='macro'))
    assert rep['support'].tolist()[:2] == [y.sum(), (1 - y).sum()]
    with pytest.raises(CXRDataError, match='threshold has 3 values for 2 classes'):
        classification_report_table(y2, s2, threshold=[.1, .2, .3])
    with pytest.raises(ValueError, match=r"3 labels \['a', 'b', 'c'\] given for 2 columns"):
        classification_report_table(y2, s2, ['a', 'b', 'c'])


def test_report_table_multiclass_is_one_vs_rest():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 300); s = rng.dirichlet(np.ones(3), 300) + 0.5 * np.eye(3)[y]; s /= s.sum(1, keepdims=True)
    rep = classification_report_table(y, s, ['No Finding', 'Effusion', 'Pneumothorax'])
    assert rep.loc['macro avg', 'auroc'] == pytest.approx(roc_auc_score(y, s, multi_class='ovr'))
    assert rep['threshold'].isna().all()
    with pytest.raises(CXRDataError, match='row 0'): classification_report_table(np.r_[5, y[1:]], s)


def test_seed000_formulas_by_hand():
    m = binary_confusion_metrics(tp=30, fp=10, fn=20, tn=40)
    assert (m['sensitivity'], m['specificity'], m['ppv'], m['fdr']) == pytest.approx((.6, .8, .75, .25))
    assert (m['npv'], m['for'], m['youden']) == pytest.approx((2 / 3, 1 / 3, .4))
    assert m['dp'] == pytest.approx(np.sqrt(3) / np.pi * np.log10(6))
    assert discriminant_power(.6, .8, base=np.e) == pytest.approx(np.sqrt(3) / np.pi * np.log(6))
    assert discriminant_power(1.0, .8) == np.inf and youden_index(1, 1) == 1
    with pytest.raises(CXRDataError, match='specificity -0.1'): discriminant_power(.5, -.1)


def test_confusion_metrics_binary_and_macro():
    b = confusion_metrics([0, 0, 1, 1, 1], [0, 1, 1, 1, 0])
    assert b.name == 'binary (class 1)' and b['sensitivity'] == pytest.approx(2 / 3) and b['specificity'] == .5
    cm = np.array([[5, 1, 0], [2, 6, 2], [0, 1, 3]])
    t = one_vs_rest_metrics(cm, ['NF', 'E', 'P'])
    assert t.loc['E', 'sensitivity'] == pytest.approx(.6) and t.loc['E', 'specificity'] == pytest.approx(8 / 10)
    assert t.loc['macro', 'dp'] == pytest.approx(t.iloc[:3]['dp'].mean())
    y = np.repeat([0, 1, 2], [6, 10, 4]); p = np.concatenate([np.repeat(range(3), r) for r in cm])
    pd.testing.assert_series_equal(confusion_metrics(y, p), t.loc['macro'].rename('macro'))
    with pytest.raises(CXRDataError, match='y_pred has 2'): confusion_metrics([0, 1, 1], [0, 1])
    with pytest.raises(CXRDataError, match='y_true\\[1\\] is -1'): confusion_metrics([0, -1], [0, 1], n_classes=2)
    with pytest.raises(CXRDataError, match='square'): one_vs_rest_metrics(np.ones((2, 3)))


def test_youden_threshold(binary):
    y, s = binary
    t = youden_threshold(y, s)
    j = max(confusion_metrics(y, (s >= c).astype(int))['youden'] for c in np.unique(s))
    assert confusion_metrics(y, (s >= t).astype(int))['youden'] == pytest.approx(j)
    with pytest.raises(CXRDataError, match="class '0'"): youden_threshold(np.zeros(4), [.1, .2, .3, .4])


def test_bootstrap_matches_loop_and_is_reproducible(binary):
    y, s = binary
    fast = bootstrap_ci(y, s, 'auroc', n_resamples=100, seed=7)
    loop = bootstrap_ci(y, s, lambda a, b: roc_auc_score(a, b), n_resamples=100, seed=7)
    assert isinstance(fast, CI) and fast[:3] == pytest.approx(loop[:3], abs=1e-12)
    assert fast == bootstrap_ci(y, s, n_resamples=100, seed=7) and fast != bootstrap_ci(y, s, n_resamples=100, seed=8)
    assert fast.low < fast.value < fast.high and fast.value == pytest.approx(roc_auc_score(y, s))


def test_bootstrap_groups_skips_and_errors(binary):
    y, s = binary
    groups = np.repeat(np.arange(100), 4)
    ci = bootstrap_ci(y, s, n_resamples=50, groups=groups.astype(str))
    assert ci.n_skipped == 0 and ci.low < ci.value < ci.high
    few = bootstrap_ci(np.r_[np.zeros(30), 1], np.r_[np.zeros(30), 1.], n_resamples=200, minimum=0)   # the skipping, shown without the rule
    assert few.n_skipped > 0 and few.value == 1
    honest = bootstrap_ci(np.r_[np.zeros(30), 1], np.r_[np.zeros(30), 1.], n_resamples=200)
    assert honest.value == 1 and np.isnan(honest.low) and np.isnan(honest.high) and honest.note.startswith('n = 31 (1 positive, 30 negative)')
    with pytest.raises(CXRDataError, match='groups has 3 values for 400'): bootstrap_ci(y, s, groups=[1, 2, 3])
    with pytest.raises(CXRDataError, match='groups\\[2\\] is missing'):
        bootstrap_ci(y[:4], s[:4], groups=['a', 'b', None, 'a'], minimum=0)
    with pytest.raises(ValueError, match='confidence is 95'): bootstrap_ci(y, s, confidence=95)
    with pytest.raises(CXRDataError, match='undefined in all'):
        bootstrap_ci(y, s, lambda a, b: np.nan, n_resamples=5)
    with pytest.raises(CXRDataError, match='per_class_auroc_ci'): bootstrap_ci(np.c_[y, y], np.c_[s, s])


def test_per_class_auroc_ci(binary):
    y, s = binary
    t = per_class_auroc_ci(np.c_[y, 1 - y], np.c_[s, -s], ['a', 'b'], n_resamples=100, seed=3)
    assert list(t.columns) == ['label', 'auc', 'low', 'high', 'n_skipped', 'note'] and list(t.label) == ['a', 'b']
    assert t['note'].isna().all()
    assert t.loc[0, ['auc', 'low', 'high']].tolist() == pytest.approx(list(bootstrap_ci(y, s, n_resamples=100, seed=3)[:3]))
    t2 = per_class_auroc_ci(np.c_[y, np.zeros(400)], np.c_[s, s], n_resamples=20, skip_single_class=True)
    assert np.isnan(t2.loc[1, ['auc', 'low', 'high']].astype(float)).all() and t2.loc[1, 'note'].startswith('n = 400 (0 positive, 400 negative)')
    t3 = per_class_auroc_ci(np.c_[y, np.zeros(400)], np.c_[s, s], n_resamples=20, skip_single_class=True, minimum=0)
    assert np.isnan(t3.loc[1, 'auc']) and t3.loc[1, 'n_skipped'] == 20   # without the rule: undefined in every resample


def test_bootstrap_coverage_binormal():
    "~95% of 95% percentile intervals cover the true binormal AUROC Φ(μ/√2)."
    rng, mu = np.random.default_rng(11), 1.0
    true_auc = norm.cdf(mu / np.sqrt(2))
    y = np.r_[np.zeros(50), np.ones(50)]
    covered = []
    for i in range(150):
        c = bootstrap_ci(y, rng.normal(0, 1, 100) + mu * y, n_resamples=200, seed=i)
        covered.append(c.low <= true_auc <= c.high)
    assert 0.88 <= np.mean(covered) <= 0.99


def _brute_force(y, scores):
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    psi = (pos[:, :, None] > neg[:, None, :]) + 0.5 * (pos[:, :, None] == neg[:, None, :])
    return psi.mean((1, 2)), np.cov(psi.mean(2)) / pos.shape[1] + np.cov(psi.mean(1)) / neg.shape[1]


def test_delong_against_brute_force_and_sklearn():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 30)
    s = np.round(np.vstack([y + rng.normal(0, 1, 30), y + rng.normal(0, 2, 30), rng.normal(0, 1, 30)]), 1)
    auc, cov = delong_auc_cov(y, s)
    auc_bf, cov_bf = _brute_force(y, s)
    np.testing.assert_allclose(auc, auc_bf, atol=1e-12); np.testing.assert_allclose(cov, cov_bf, atol=1e-12)
    np.testing.assert_allclose(auc, [roc_auc_score(y, r) for r in s], atol=1e-12)
    r = delong_test(y, s[0], s[1])
    assert isinstance(r, DeLongResult)
    z = (auc_bf[0] - auc_bf[1]) / np.sqrt(cov_bf[0, 0] + cov_bf[1, 1] - 2 * cov_bf[0, 1])
    assert r.z == pytest.approx(z) and r.p_value == pytest.approx(2 * norm.sf(abs(z)))
    ci = delong_ci(y, s[0], confidence=0.9)
    assert ci.value == pytest.approx(auc_bf[0])
    assert ci.high - ci.value == pytest.approx(norm.ppf(0.95) * np.sqrt(cov_bf[0, 0]))
    assert delong_test(y, s[0], s[0])[2:] == (0.0, 1.0)


def test_delong_errors():
    with pytest.raises(CXRDataError, match='1 positives'): delong_test([0, 0, 1], [1, 2, 3], [3, 2, 1])
    with pytest.raises(CXRDataError, match='NaN'): delong_ci([0, 0, 1, 1], [1, np.nan, 3, 4])
    with pytest.raises(CXRDataError, match='4 values but the scores have 3'): delong_ci([0, 0, 1, 1], [1, 2, 3])


def test_seed000_reference_csv_schema_and_inconsistent_rows():
    ref = pd.read_csv(embedded_data_dir() / 'reference' / 'seed000_supplement.csv')
    assert list(ref.columns) == ['seed_file', 'paper', 'table', 'setting', 'split', 'model', 'label', 'metric', 'value', 'note']
    assert len(ref) == 168 and set(ref.metric) == {'sensitivity', 'specificity', 'youden', 'dp'}
    assert set(ref.setting) == {'cross-entropy', 'proposed loss'} and set(ref.model) == {'PVT', 'VGG16', 'ResNet50'}
    assert (ref.groupby('table').split.unique().map(list).to_dict() == {'Table I': ['ottawa'], 'Table II': ['nih']})
    w = ref.pivot_table(index=['table', 'label', 'model', 'setting'], columns='metric', values='value').reset_index()
    off = w[(w.youden - youden_index(w.sensitivity, w.specificity)).abs() > 0.002]
    assert set(zip(off.table, off.model, off.setting)) == {('Table I', 'VGG16', 'cross-entropy'), ('Table I', 'VGG16', 'proposed loss')}
    pnih = w[(w.table == 'Table II') & (w.label == 'Pneumothorax vs No Finding')]
    np.testing.assert_allclose(discriminant_power(pnih.sensitivity, pnih.specificity), pnih.dp, atol=0.001)


# argument and data errors (defect: raw sklearn/numpy errors, or columns silently dropped) -----------
def _plain_value_error(excinfo):
    return excinfo.type is ValueError


def test_per_class_auroc_needs_one_name_per_column():
    y, p = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 1], [1, 0, 0]]), np.random.default_rng(0).random((4, 3))
    with pytest.raises(ValueError, match=r'2 labels .* 3 columns') as e: per_class_auroc(y, p, ['a', 'b'])
    assert _plain_value_error(e)
    with pytest.raises(ValueError, match=r'2 labels .* 3 columns') as e: per_class_auroc_ci(y, p, ['a', 'b'], n_resamples=5)
    assert _plain_value_error(e)


def test_bad_y_true_is_a_data_error():
    p = np.array([.1, .4, .35, .8, .2])
    for f in (per_class_auroc, macro_auroc, lambda y, s: bootstrap_ci(y, s, n_resamples=5)):
        with pytest.raises(CXRDataError, match=r'y_true has 1 NaN .*row 2'): f(np.array([0, 1, np.nan, 1, 0]), p)
        with pytest.raises(CXRDataError, match=r'y_true\[3, 0\] is 2; expected 0 or 1'): f(np.array([0, 1, 0, 2, 0]), p)
    with pytest.raises(CXRDataError, match=r'y_true has 1 NaN'): delong_test([0, 1, np.nan, 1, 0], p, p)


def test_delong_scores_of_unequal_length():
    with pytest.raises(CXRDataError, match=r'score_a has 4 values but score_b has 3'):
        delong_test([0, 0, 1, 1], [1, 2, 3, 4], [1, 2, 3])


def test_empty_bootstrap():
    y, s = np.array([0, 1, 0, 1]), np.array([.1, .2, .3, .4])
    for call in (lambda: bootstrap_ci(y, s, n_resamples=0), lambda: bootstrap_ci(y, s, lambda a, b: 0.5, n_resamples=0),
                 lambda: per_class_auroc_ci(y, s, n_resamples=0)):
        with pytest.raises(ValueError, match='n_resamples is 0; expected at least 1') as e: call()
        assert _plain_value_error(e)
    for call in (lambda: bootstrap_ci([], [], n_resamples=10), lambda: per_class_auroc_ci(np.zeros((0, 2)), np.zeros((0, 2))),
                 lambda: per_class_auroc([], [])):
        with pytest.raises(CXRDataError, match='y_true is empty'): call()


def test_macro_auroc_ci_equals_the_generic_bootstrap_of_macro_auroc():
    "The vectorised macro AUROC CI draws the same resamples as `bootstrap_ci` with `macro_auroc` (rare classes drop out of some)."
    from cxr_notebooks.metrics.classification import CI, bootstrap_ci, macro_auroc, macro_auroc_ci
    rng = np.random.default_rng(0)
    y = (rng.random((60, 3)) < [0.5, 0.2, 0.04]).astype(float); y[:2, 2] = 1
    p = np.clip(y * 0.3 + rng.random((60, 3)), 0, 1)
    groups = np.repeat(np.arange(30), 2)
    generic = bootstrap_ci(y, p, lambda a, b: macro_auroc(a, b, skip_single_class=True), n_resamples=200, seed=3, groups=groups)
    fast = macro_auroc_ci(y, p, n_resamples=200, seed=3, groups=groups, minimum=0)   # the resampling, without the small-sample rule
    assert isinstance(fast, CI) and np.allclose(fast[:3], generic[:3]) and fast.n_skipped == generic.n_skipped == 0
    kept = [k for k in range(3) if min(y[:, k].sum(), len(y) - y[:, k].sum()) >= 20]   # the rule: the rare classes are left out
    assert kept == [0]
    honest = macro_auroc_ci(y, p, n_resamples=200, seed=3, groups=groups)
    assert np.allclose(honest[:3], macro_auroc_ci(y[:, kept], p[:, kept], n_resamples=200, seed=3, groups=groups, minimum=0)[:3])


def test_a_single_bootstrap_resample_is_refused_and_few_warn():
    "Defect: bootstrap_ci(n_resamples=1) returned an 'interval' (one resample's value) that excluded its own estimate."
    from cxr_notebooks.metrics.classification import bootstrap_ci
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(20), np.ones(20)]; s = y * 0.3 + rng.random(40)
    for metric in ('auroc', lambda a, b: float(np.mean(b[a == 1]) - np.mean(b[a == 0]))):
        with pytest.raises(ValueError, match=r'n_resamples is 1; a bootstrap interval needs at least 2 resamples'):
            bootstrap_ci(y, s, metric, n_resamples=1)
        with pytest.warns(UserWarning, match=r'n_resamples=5 is fewer than 20 = 1/\(1 - confidence\)'):
            bootstrap_ci(y, s, metric, n_resamples=5)
    ci = bootstrap_ci(y, s, n_resamples=20)
    assert ci.low <= ci.value <= ci.high
