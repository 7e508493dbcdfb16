"""reproduce.kit's k-fold AUC table (shared by notebooks 001, 002, 004) and the metric-per-row comparison with a paper (000)."""
import numpy as np
import pandas as pd
import pytest
from cxr_notebooks.core import CXRDataError
from cxr_notebooks.reproduce import kit


def _pred(shift: float, n: int = 60, seed: int = 0) -> pd.DataFrame:
    "Two classes; Mass's scores separate its classes more as `shift` grows, Nodule has no positive."
    rng = np.random.default_rng(seed); y = np.tile([0, 1], n // 2)
    return pd.DataFrame({'y_Mass': y, 'p_Mass': y * shift + rng.random(n), 'y_Nodule': 0.0, 'p_Nodule': rng.random(n)})


def test_kfold_auc_is_per_fold_auc_with_mean_sd_and_an_average_row():
    "Per-class AUC in each fold's column, mean and sample sd (ddof 1) over folds; a class without positives is NaN, not 0."
    from sklearn.metrics import roc_auc_score
    folds = {f'fold{k}': _pred(0.3 * k, seed=k) for k in range(3)}
    cv = kit.kfold_auc(folds, ['Mass', 'Nodule'])
    aucs = [roc_auc_score(p['y_Mass'], p['p_Mass']) for p in folds.values()]
    assert cv.loc['Mass', ['fold0', 'fold1', 'fold2']].tolist() == pytest.approx(aucs)
    assert cv.loc['Mass', 'mean'] == pytest.approx(np.mean(aucs)) and cv.loc['Mass', 'sd'] == pytest.approx(np.std(aucs, ddof=1))
    assert cv.loc['Nodule'].drop('folds').isna().all() and cv.loc['Nodule', 'folds'] == 0
    assert cv.loc['Average', 'fold1'] == pytest.approx(aucs[1]) and cv.loc['Average', 'folds'] == 3   # the mean over the classes with an AUC
    lazy = kit.kfold_auc(((name, p) for name, p in folds.items()), ['Mass', 'Nodule'])   # a generator (one fold trained at a time) gives the same
    pd.testing.assert_frame_equal(lazy, cv)


def test_compare_metrics_with_paper_one_row_per_setting_and_metric(tmp_path):
    ours = {s: pd.DataFrame({'metric': ['auc', 'sensitivity', 'made_up'], 'value': [0.9, 0.8, 0.1], 'low': [0.85, 0.7, 0], 'high': [0.95, 0.9, 0.2]})
            for s in ('lambda=1', 'lambda=0.5')}
    c = kit.compare_metrics_with_paper(ours, '000', 'Table VII', 'full, NIH, seed 0', tmp_path, 'λ sweep.', model='PVT', label='Effusion vs No Finding')
    assert c.columns.tolist() == ['setting', 'metric', 'paper', 'ours', 'ci_low', 'ci_high', 'difference']
    assert c[['setting', 'metric']].values.tolist() == [['lambda=1', 'auc'], ['lambda=1', 'sensitivity'], ['lambda=0.5', 'auc'], ['lambda=0.5', 'sensitivity']]
    np.testing.assert_allclose(c['difference'], c['ours'] - c['paper'])
    assert c.attrs['paper_source'].endswith('Table VII, PVT, Effusion vs No Finding') and c.attrs['setup'] == 'full, NIH, seed 0'
    assert c.attrs['caption'].startswith('λ sweep. Paper:')
    assert pd.read_csv(tmp_path / 'paper_vs_reproduced_tablevii.csv').shape == (4, 7)
    with pytest.raises(CXRDataError, match="'Table VII'"): kit.compare_metrics_with_paper(ours, '000', 'Table VII', 's', model='AlexNet')
