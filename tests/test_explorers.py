"""cxr_notebooks.viz.explorers: headless explorers driven through their state and through their widgets."""
import numpy as np
import pandas as pd
import pytest

from cxr_notebooks.core import CXRDataError
from cxr_notebooks.metrics.classification import youden_threshold
from cxr_notebooks.viz import explorers as E

LABELS = ['Effusion', 'Mass']


@pytest.fixture
def headless(monkeypatch):
    monkeypatch.setenv(E.HEADLESS_ENV, '1')


@pytest.fixture
def scores():
    rng = np.random.default_rng(1)
    y = (rng.random((120, 2)) < [0.3, 0.5]).astype(float)
    return y, np.round(np.clip(0.3 * y + rng.random((120, 2)) * 0.7, 0, 1), 3)


def hand(y, p, t):
    "TP, FP, FN, TN and seed 000's numbers at threshold t, counted by hand."
    tp, fp = int(((p >= t) & (y == 1)).sum()), int(((p >= t) & (y == 0)).sum())
    fn, tn = int(((p < t) & (y == 1)).sum()), int(((p < t) & (y == 0)).sum())
    se, sp = np.float64(tp) / (tp + fn), np.float64(tn) / (tn + fp)
    with np.errstate(divide='ignore'): dp = np.sqrt(3) / np.pi * (np.log10(se / (1 - se)) + np.log10(sp / (1 - sp)))
    return dict(tp=tp, fp=fp, fn=fn, tn=tn), dict(sensitivity=se, specificity=sp, ppv=tp / (tp + fp), npv=tn / (tn + fn),
                                                    youden=se + sp - 1, dp=dp)


def test_threshold_explorer_state_matches_hand_computation(scores):
    y, p = scores
    ex = E.ThresholdExplorer(y, p, LABELS)
    assert ex.threshold == ex.youden == youden_threshold(y[:, 0], p[:, 0])
    for label, t in (('Mass', 0.4), ('Effusion', 0.62)):
        ex.set(label=label, threshold=t)
        k = LABELS.index(label)
        counts, m = hand(y[:, k], p[:, k], t)
        assert ex.counts() == counts
        for name, v in m.items(): assert ex.metrics[name] == pytest.approx(v), name
        assert f"TP {counts['tp']}  FP {counts['fp']}  FN {counts['fn']}  TN {counts['tn']}" in ex.summary()
    with pytest.raises(ValueError, match='expected one of'): ex.set(label='Hernia')
    with pytest.raises(ValueError, match='unknown control'): ex.set(image='x')


def test_threshold_explorer_from_prediction_table_skips_unknown_labels(scores):
    y, p = scores
    y = y.copy(); y[:10, 1] = np.nan                                   # U-Ignore: unknown for Mass
    pred = pd.DataFrame({'image': range(len(y)), 'y_Effusion': y[:, 0], 'y_Mass': y[:, 1], 'p_Effusion': p[:, 0], 'p_Mass': p[:, 1]})
    ex = E.ThresholdExplorer.from_predictions(pred).set(label='Mass', threshold=0.5)
    assert ex.labels == LABELS and sum(ex.counts().values()) == 110
    assert ex.counts() == hand(y[10:, 1], p[10:, 1], 0.5)[0]
    with pytest.raises(CXRDataError, match='p_Mass'): E.ThresholdExplorer.from_predictions(pred.drop(columns='p_Mass'), ['Mass'])


def test_threshold_widget_drives_the_state(scores):
    y, p = scores
    ex = E.ThresholdExplorer(y, p, LABELS)
    w = ex.widget()
    (label, slider), text, image = w.children[0].children, w.children[1], w.children[2]
    before_text, before_png = text.value, image.value
    label.value = 'Mass'; slider.value = 0.3
    assert (ex.label, ex.threshold) == ('Mass', 0.3)
    assert ex.counts() == hand(y[:, 1], p[:, 1], 0.3)[0]
    assert text.value != before_text and 'Mass at threshold 0.3 ' in text.value
    assert image.value[:8] == b'\x89PNG\r\n\x1a\n' and image.value != before_png


def test_show_is_a_static_figure_headless(scores, headless):
    from matplotlib.figure import Figure
    ex = E.ThresholdExplorer(*scores, LABELS)
    fig = ex.show()
    assert isinstance(fig, Figure)
    roc = fig.axes[0]
    marks = {l.get_label(): (l.get_xdata()[0], l.get_ydata()[0]) for l in roc.get_lines() if l.get_label().startswith(('Youden', 'threshold'))}
    m = ex.metrics                                                     # at the Youden threshold: both marks coincide
    assert marks[f'Youden-optimal {ex.youden:.3g}'] == pytest.approx((1 - m['specificity'], m['sensitivity']))


def _square_cam(n=32, box=(8, 12, 20, 24)):
    cam = np.zeros((n, n), np.float32); x0, y0, x1, y1 = box
    cam[y0:y1, x0:x1] = 0.6; cam[y0 + 4:y1 - 4, x0 + 4:x1 - 4] = 1.0
    return cam


def test_cam_browser_boxes_and_scores_match_hand_computation(headless):
    images = [np.full((64, 64), 100, np.uint8), np.zeros((64, 64), np.uint8)]
    cams = np.stack([[_square_cam(), np.zeros((32, 32), np.float32)], [_square_cam(), _square_cam()]])   # (2 images, 2 classes)
    truth = pd.DataFrame({'image': ['a', 'a'], 'label': ['Effusion', 'Mass'], 'x_min': [16., 0.], 'y_min': [24., 0.],
                          'x_max': [48., 8.], 'y_max': [56., 8.]})
    br = E.CAMBrowser(images, cams, LABELS, ['a', 'b'], truth)
    br.set(label='Effusion', image='a', threshold=0.5)               # the whole 12x12 square -> 24x24 px at 64 px
    assert br.predicted_box == (16.0, 24.0, 40.0, 48.0)
    assert br.scores == pytest.approx(dict(iou=24 * 24 / (32 * 32), ior=1.0))
    br.set(threshold=0.8)                                           # only the 4x4 core -> 8x8 px
    assert br.predicted_box == (24.0, 32.0, 32.0, 40.0) and br.scores == pytest.approx(dict(iou=64 / 1024, ior=1.0))
    assert br.set(label='Mass').predicted_box is None and br.scores == dict(iou=0.0, ior=0.0)
    s = br.set(image='b').scores
    assert np.isnan(s['iou']) and np.isnan(s['ior'])                 # no truth box on image b
    w = br.set(image='a', label='Effusion', threshold=0.5).widget()
    w.children[0].children[2].value = 0.8
    assert 'IoU 0.062  IoR 1.000' in w.children[1].value
    fig = br.show()
    assert len(fig.axes[1].patches) == 2 and 'IoU 0.06' in fig.axes[1].get_title()
    with pytest.raises(CXRDataError, match=r'\(N, K, h, w\)'): E.CAMBrowser(images, cams[:, :1], LABELS)


def test_grid_explorer_table_and_ci_bars(headless):
    runs = pd.DataFrame({'loss': ['bce', 'wfocal', 'bce', 'wfocal'], 'size': [224, 224, 320, 320], 'seed': [0, 0, 0, 0],
                         'auc': [0.70, 0.74, 0.72, 0.75], 'auc_low': [0.66, 0.70, 0.69, 0.71], 'auc_high': [0.74, 0.78, 0.75, 0.79],
                         'loss_value': [0.3, 0.2, 0.3, 0.2], 'loss_value_low': [.2] * 4, 'loss_value_high': [.4] * 4})
    gx = E.GridExplorer(runs)
    assert gx.metrics == ['auc', 'loss_value'] and gx.axes == ['loss', 'size', 'seed']
    t = gx.set(metric='auc', axis='size').table
    assert t.columns.tolist() == ['size', 'loss', 'auc', 'auc_low', 'auc_high']   # seed does not vary: left out
    assert t['auc'].tolist() == [0.70, 0.74, 0.72, 0.75]
    fig = gx.show()
    ax = fig.axes[0]
    assert [l.get_text() for l in ax.get_legend().get_texts()] == ['loss=bce', 'loss=wfocal']
    bce = ax.containers[0]                                          # errorbar container of loss=bce
    assert bce.lines[0].get_xdata().tolist() == [224, 320] and bce.lines[0].get_ydata().tolist() == [0.70, 0.72]
    seg = bce.lines[2][0].get_segments()
    np.testing.assert_allclose([s[:, 1] for s in seg], [(0.66, 0.74), (0.69, 0.75)])
    w = gx.widget()
    w.children[0].children[0].value = 'loss_value'
    assert gx.metric == 'loss_value' and w.children[1].value.startswith('<pre>loss_value by size')
    with pytest.raises(CXRDataError, match='_low'): E.GridExplorer(runs[['loss', 'auc']])


def test_model_cams_feed_the_browser():
    import torch
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(3, 2))
    x = torch.rand(3, 1, 16, 16)
    cams = E.model_cams(net, x, 2, target_layer=net[0])
    from cxr_notebooks.explain.cams import compute_cam
    assert cams.shape == (3, 2, 16, 16)
    np.testing.assert_allclose(cams[:, 1], compute_cam(net, x, 1, target_layer=net[0]))
    br = E.CAMBrowser(list(x[:, 0].numpy()), cams, LABELS)
    assert np.array_equal(br.set(image='2', label='Mass').cam, cams[2, 1])


def test_threshold_explorer_from_run_reads_the_recorded_predictions(tmp_path, scores):
    "`from_run` opens the prediction CSV that metrics.json names (a path inside the run folder); a record without one says so."
    import json
    y, p = scores
    (tmp_path / 'm').mkdir()
    pd.DataFrame({'image': range(len(y)), **{f'y_{l}': y[:, k] for k, l in enumerate(LABELS)},
                  **{f'p_{l}': p[:, k] for k, l in enumerate(LABELS)}}).to_csv(tmp_path / 'm' / 'preds.csv', index=False)
    (tmp_path / E.RUN_RECORD).write_text(json.dumps({'predictions': 'm/preds.csv'}))
    ex = E.ThresholdExplorer.from_run(tmp_path, label='Mass', threshold=0.5)
    assert ex.counts() == E.ThresholdExplorer(y, p, LABELS, label='Mass', threshold=0.5).counts()
    (tmp_path / E.RUN_RECORD).write_text('{"predictions": null}')
    with pytest.raises(CXRDataError, match='names no test prediction file'): E.ThresholdExplorer.from_run(tmp_path)
    with pytest.raises(CXRDataError, match='metrics.json'): E.ThresholdExplorer.from_run(tmp_path / 'nothing')


def test_cam_browser_save_and_from_run_round_trip(tmp_path):
    "A saved browser reopens with the same pictures, CAMs, boxes and threshold; images of different sizes survive."
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (32, 32), dtype=np.uint8), rng.integers(0, 255, (40, 48), dtype=np.uint8)]
    cams = rng.random((2, 2, 8, 8)).astype(np.float32)
    boxes = pd.DataFrame({'image': ['a', 'b'], 'label': ['Mass', 'Effusion'], 'x_min': [1., 2.], 'y_min': [3., 4.], 'x_max': [10., 20.], 'y_max': [12., 30.]})
    br = E.CAMBrowser(images, cams, LABELS, ['a', 'b'], boxes, threshold=0.35)
    assert br.save(tmp_path) == tmp_path / E.CAM_BROWSER_FILE
    again = E.CAMBrowser.from_run(tmp_path)
    assert again.threshold == pytest.approx(0.35) and again.names == ['a', 'b'] and again.labels == LABELS
    assert br.set(image='b', label='Effusion').save(tmp_path) and E.CAMBrowser.from_run(tmp_path).state() == br.state()   # the state shown is kept
    np.testing.assert_array_equal(again.cams, cams); np.testing.assert_array_equal(again.images[1], images[1])
    for name, label in (('a', 'Mass'), ('b', 'Effusion')):
        assert again.set(image=name, label=label).scores == br.set(image=name, label=label).scores
        np.testing.assert_array_equal(again.truth_boxes, br.truth_boxes)
    E.CAMBrowser(images, cams, LABELS).save(tmp_path)   # no boxes: an empty box table round-trips
    assert E.CAMBrowser.from_run(tmp_path).boxes.empty
    with pytest.raises(CXRDataError, match='cam_browser.npz'): E.CAMBrowser.from_run(tmp_path / 'nothing')


def test_grid_explorer_from_a_grid_summary():
    "`from_summary` takes `reproduce.grid.grid_summary`'s table: the varying parameters are the axes, failed runs are left out."
    summary = pd.DataFrame({'run': ['a', 'b', 'c', 'd'], 'loss': ['bce', 'wfocal', 'bce', 'wfocal'], 'stages': [1, 1, 2, 2],
                            'status': ['done', 'done', 'done', 'failed'], 'metric': ['mean auroc'] * 3 + [None],
                            'value': [0.7, 0.74, 0.72, None], 'low': [0.66, 0.7, 0.69, None], 'high': [0.74, 0.78, 0.75, None],
                            'setup': ['s'] * 4, 'seconds': [1.0] * 4, 'error': [None] * 3 + ['boom'], 'folder': ['x'] * 4})
    gx = E.GridExplorer.from_summary(summary, axis='stages')
    assert gx.axes == ['loss', 'stages'] and gx.metrics == ['mean auroc'] and len(gx.runs) == 3
    assert gx.table.columns.tolist() == ['stages', 'loss', 'mean auroc', 'mean auroc_low', 'mean auroc_high']
    with pytest.raises(CXRDataError, match='grid_summary'): E.GridExplorer.from_summary(summary.drop(columns='status'))


@pytest.mark.slow
def test_explorers_from_a_finished_run_folder_headless(headless, tmp_path):
    "Notebook 004 at its smallest setting writes what `ThresholdExplorer.from_run` and `CAMBrowser.from_run` read; both draw headless."
    from matplotlib.figure import Figure
    from cxr_notebooks.reproduce.runner import repro_notebooks, run_reproduction
    nb = repro_notebooks()['004']
    run_reproduction('004', tmp_path, nb.smallest, progress=False)
    tx = E.ThresholdExplorer.from_run(tmp_path)
    pred = pd.read_csv(tmp_path / __import__('json').loads((tmp_path / E.RUN_RECORD).read_text())['predictions'])
    assert tx.labels == [c[2:] for c in pred.columns if c.startswith('y_') and f'p_{c[2:]}' in pred.columns]
    assert isinstance(tx.show(), Figure) and 'Youden-optimal' in tx.summary()
    br = E.CAMBrowser.from_run(tmp_path)
    assert len(br.names) >= 1 and br.cams.shape[:2] == (len(br.names), len(br.labels)) and len(br.boxes)
    assert isinstance(br.set(image=str(br.boxes['image'].iloc[0]), label=br.boxes['label'].iloc[0]).show(), Figure)
    assert len(br.truth_boxes) >= 1
