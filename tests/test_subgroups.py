"Contract of cxr_notebooks.eval.subgroups: mean AUROC per sex and view position (seed 004 Sec. 5.1) on the embedded NIH sample."
import numpy as np
import pandas as pd
import pytest
from cxr_notebooks.core import CXRDataError
from cxr_notebooks.data.labels import NIH_LABELS
from cxr_notebooks.data.nih import nih_sample_table
from cxr_notebooks.eval.predictions import mean_auc_ci
from cxr_notebooks.eval.subgroups import SUBGROUP_COLUMNS, subgroup_table

LABELS = list(NIH_LABELS)


@pytest.fixture(scope='module')
def images():
    return nih_sample_table(256)


@pytest.fixture(scope='module')
def pred(images):
    "A prediction table (as `predict_table` writes it) with informative synthetic scores."
    rng = np.random.default_rng(0)
    y = images[LABELS].to_numpy(float)
    p = np.clip(0.3 * y + rng.random(y.shape) * 0.7, 0, 1)
    return pd.concat([images[['image', 'patient_id']].reset_index(drop=True),
                      pd.DataFrame(y, columns=[f'y_{l}' for l in LABELS]), pd.DataFrame(p, columns=[f'p_{l}' for l in LABELS])], axis=1)


def test_rows_counts_and_columns(pred, images):
    t = subgroup_table(pred, LABELS, n_bootstrap=20, images=images)
    assert list(t.columns) == list(SUBGROUP_COLUMNS)
    assert list(zip(t.attribute, t.value)) == [('all', 'all'), ('gender', 'F'), ('gender', 'M'), ('view', 'AP'), ('view', 'PA')]
    counts = {('gender', k): v for k, v in images.gender.value_counts().items()} | {('view', k): v for k, v in images.view.value_counts().items()}
    for _, r in t.iloc[1:].iterrows():
        assert r.images == counts[(r.attribute, r.value)]
        sub = images[images[r.attribute] == r.value]
        assert r.patients == sub.patient_id.nunique()
    assert t.images.iloc[0] == len(images) and t.patients.iloc[0] == images.patient_id.nunique()
    assert ((t.low <= t.mean_auc) & (t.mean_auc <= t.high)).all() and (t.mean_auc > 0.6).all()
    for _, r in t.iterrows():   # the mean covers the classes with 20 positives and 20 negatives in the subgroup, the others are named
        sub = images if r.attribute == 'all' else images[images[r.attribute] == r.value]
        pos = sub[LABELS].sum()
        assert r.skipped.split(', ') == [l for l in LABELS if min(pos[l], len(sub) - pos[l]) < 20] and r.n_classes == 14 - r.n_skipped


def test_all_row_is_mean_auc_ci(pred, images):
    t = subgroup_table(pred, LABELS, by=('view',), n_bootstrap=30, seed=2, images=images)
    ref = mean_auc_ci(pred, LABELS, n_bootstrap=30, seed=2)
    assert t.iloc[0][['mean_auc', 'low', 'high']].to_numpy(float) == pytest.approx([ref['value'], ref['low'], ref['high']])
    ap = pred[(images.view == 'AP').to_numpy()]
    ref_ap = mean_auc_ci(ap, LABELS, n_bootstrap=30, seed=2)
    assert t.set_index('value').loc['AP', ['mean_auc', 'low', 'high']].to_numpy(float) == pytest.approx([ref_ap['value'], ref_ap['low'], ref_ap['high']])


def test_class_without_positive_in_a_subgroup_is_skipped_and_counted(pred, images):
    p = pred.copy()
    female = (images.gender == 'F').to_numpy()
    p.loc[female, 'y_Hernia'] = 0; p.loc[female, 'y_Edema'] = 0
    t = subgroup_table(p, LABELS, by=('gender',), n_bootstrap=20, images=images).set_index('value')
    assert t.loc['F', 'n_skipped'] == 4 and t.loc['F', 'n_classes'] == 10 and t.loc['F', 'skipped'] == 'Pneumonia, Edema, Emphysema, Hernia'
    assert t.loc['M', 'skipped'] == 'Pneumonia, Pneumothorax, Edema, Hernia' and np.isfinite(t.loc['F', 'mean_auc'])


def test_subgroup_with_no_usable_class_is_a_nan_row(pred, images):
    p = pred.copy()
    ap = (images.view == 'AP').to_numpy()
    p.loc[ap, [f'y_{l}' for l in LABELS]] = 0
    t = subgroup_table(p, LABELS, by=('view',), n_bootstrap=10, images=images).set_index('value')
    assert t.loc['AP', 'n_classes'] == 0 and t.loc['AP', 'n_skipped'] == 14 and np.isnan(t.loc['AP', 'mean_auc'])
    assert 'too few to measure' in t.loc['AP', 'note'] and pd.isna(t.loc['PA', 'note'])
    assert np.isfinite(t.loc['PA', 'mean_auc'])


def test_metadata_in_the_prediction_table_and_sex_alias(pred, images):
    merged = pred.merge(images[['image', 'gender', 'view']], on='image')
    a = subgroup_table(merged, LABELS, by=('sex',), n_bootstrap=10)
    b = subgroup_table(pred, LABELS, by=('gender',), n_bootstrap=10, images=images)
    pd.testing.assert_frame_equal(a.drop(columns='attribute'), b.drop(columns='attribute'))
    assert list(a.attribute) == ['all', 'sex', 'sex']


def test_missing_metadata_names_the_column(pred, images):
    with pytest.raises(CXRDataError, match="'view'.*images="):
        subgroup_table(pred, LABELS, n_bootstrap=10)
    with pytest.raises(CXRDataError, match="'image'"):
        subgroup_table(pred, LABELS, n_bootstrap=10, images=images.drop(columns='image'))
    with pytest.raises(CXRDataError, match='2 of 646 prediction rows'):
        subgroup_table(pred, LABELS, n_bootstrap=10, images=images.iloc[2:])
