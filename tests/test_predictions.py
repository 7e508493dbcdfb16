"cxr_notebooks.eval.predictions: CAM examples on the embedded boxed NIH images."
import numpy as np
import pytest
import cxr_notebooks.eval.predictions as ev
from cxr_notebooks.data.labels import NIH_LABELS
from cxr_notebooks.data.nih import nih_sample_table, read_nih_boxes
from cxr_notebooks.core import CXRDataError, embedded_data_dir
from cxr_notebooks.models.backbones import create_model


def test_cam_examples_read_each_image_once_and_scale_its_boxes(monkeypatch):
    "Defect (known leftover): every example decoded its file twice, once for the stored size and once resized."
    table = nih_sample_table(256)
    boxes = read_nih_boxes(embedded_data_dir() / 'nih' / 'BBox_List_2017.csv', stored_size=256)
    boxed = table[table['image'].isin(boxes['image'])].head(3)
    reads = []
    real = ev.read_image
    monkeypatch.setattr(ev, 'read_image', lambda path, *a, **k: reads.append(path) or real(path, *a, **k))
    imgs, cams, titles, bxs = ev.cam_examples(create_model('resnet50', len(NIH_LABELS)).eval(), boxed, boxes, NIH_LABELS, 64, 'resnet50', n=2)
    assert len(imgs) == len(cams) == len(titles) == len(bxs) == 2
    assert len(reads) == 2 and len(set(reads)) == 2
    for img, cam, title, b in zip(imgs, cams, titles, bxs):
        name, label = title.split(': ')
        truth = boxes[(boxes['image'] == name) & (boxes['label'] == label)][['x_min', 'y_min', 'x_max', 'y_max']].to_numpy(float)
        assert img.shape == cam.shape == (64, 64) and img.dtype == np.uint8
        np.testing.assert_allclose(b, truth * 64 / 256)


def test_mean_auc_ci_reuses_auc_table_resamples(monkeypatch):
    "Issue 21: one bootstrap pass for the per-class and the mean CIs, with the numbers of per_class_auroc_ci / macro_auroc_ci."
    import pandas as pd
    import cxr_notebooks.metrics.classification as mc
    rng = np.random.default_rng(5); n = 300
    y = (rng.random((n, 3)) < [0.3, 0.1, 0.0]).astype(float); y[:12, 1] = 1   # column c: negatives only
    pred = pd.DataFrame({'image': [f'i{i}' for i in range(n)], 'patient_id': np.arange(n) // 2,
                         **{f'y_{l}': y[:, k] for k, l in enumerate('abc')}, **{f'p_{l}': rng.random(n) + 0.5 * y[:, k] for k, l in enumerate('abc')}})
    tab = ev.auc_table(pred, list('abc'), 150, 4)
    old = mc.per_class_auroc_ci(y, pred[['p_a', 'p_b', 'p_c']].to_numpy(), list('abc'), 150, 4, pred['patient_id'].to_numpy(), skip_single_class=True)
    pd.testing.assert_frame_equal(tab, old, check_exact=False, rtol=0, atol=1e-12)
    calls = []
    real = ev._bootstrap_counts
    monkeypatch.setattr(ev, '_bootstrap_counts', lambda *a, **k: calls.append(1) or real(*a, **k))
    m = ev.mean_auc_ci(pred, list('abc'), 150, 4, per_class=tab)
    assert not calls   # no second pass
    ref = mc.macro_auroc_ci(y[:, :2], pred[['p_a', 'p_b']].to_numpy(), 150, 4, pred['patient_id'].to_numpy())
    assert m['n_classes'] == 2 and np.allclose([m['value'], m['low'], m['high']], list(ref[:3]), atol=1e-12, rtol=0)
    assert ev.mean_auc_ci(pred, list('abc'), 150, 4) == m and calls   # without the table: drawn once, same numbers
    both = pd.concat([tab, ev.auc_table(pred, list('abc'), 150, 5)])   # tables with resamples still concatenate
    assert len(both) == 6


def test_too_few_to_measure_no_ci_no_headline():
    "Issue 17: below MIN_PER_CLASS positives or negatives a class gets no CI (a note instead); a 4-image test part gets no headline."
    import pandas as pd
    from cxr_notebooks.metrics.classification import MIN_PER_CLASS, ci_text
    from cxr_notebooks.reproduce.kit import check_record
    rng = np.random.default_rng(3)
    def table(n_pos, n_neg):
        y = np.r_[np.ones(n_pos), np.zeros(n_neg)]
        return pd.DataFrame({'image': [f'i{i}' for i in range(len(y))], 'patient_id': np.arange(len(y)),
                             'y_a': y, 'p_a': np.clip(0.3 * y + rng.random(len(y)), 0, 1)})
    at = ev.auc_table(table(MIN_PER_CLASS, MIN_PER_CLASS), ['a'], 100)          # at the minimum: a CI, no note
    assert at.loc[0, 'low'] <= at.loc[0, 'auc'] <= at.loc[0, 'high'] and at.loc[0, 'note'] is None
    below = ev.auc_table(table(MIN_PER_CLASS - 1, 200), ['a'], 100)              # one positive short: the value, no CI, the note
    assert np.isfinite(below.loc[0, 'auc']) and np.isnan(below.loc[0, ['low', 'high']].astype(float)).all()
    assert below.loc[0, 'note'] == f'n = {MIN_PER_CLASS + 199} ({MIN_PER_CLASS - 1} positive, 200 negative): too few to measure (a CI needs at least 20 of each)'
    h = ev.mean_auc_ci(table(1, 3), ['a'], 100)                                   # the 4-image test part of seed 000's smoke profile
    assert (h['value'], h['low'], h['high'], h['n_classes']) == (None, None, None, 0)
    assert h['note'] == 'n = 4 (1 positive, 3 negative): too few to measure (a CI needs at least 20 of each)' and ci_text(**{k: h[k] for k in ('value', 'low', 'high', 'note')}) == h['note']
    rec = {'schema': 'cxr-notebooks/metrics/1', 'paper': {}, 'notebook': 'x', 'profile': 'smoke', 'seed': 0, 'setup': 's', 'config': {},
           'data': {}, 'headline': h, 'results': {}, 'comparisons': {}, 'versions': {}, 'created': ''}
    check_record(rec)                                                             # no CI, but the note: accepted
    with pytest.raises(CXRDataError, match='headline needs'): check_record({**rec, 'headline': {**h, 'note': None}})   # no CI and no reason
    with pytest.raises(CXRDataError, match='headline needs'): check_record({**rec, 'headline': {'metric': 'mean_auc', 'value': 0.7, 'low': 0.6}})
