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
