"Contract tests for cxr_notebooks.viz.plots: figure structure, saved files, paper-vs-reproduced arithmetic and errors."
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from cxr_notebooks.core import CXRDataError
from cxr_notebooks.viz.plots import (COMPARISON_COLUMNS, paper_vs_reproduced, plot_cam_grid, plot_roc_curves,
                                 plot_training_curves, style_comparison)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close('all')


@pytest.fixture
def scores():
    rng = np.random.default_rng(1)
    yt = rng.integers(0, 2, (120, 3)).astype(float)
    return yt, yt + rng.normal(0, 1, (120, 3)), ['Atelectasis', 'Effusion', 'Hernia']


def _legend_texts(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_roc_grid_axes_lines_and_legends(scores, tmp_path):
    yt, ys, labels = scores
    ci = pd.DataFrame({'label': ['Effusion'], 'auc': [0.8123], 'low': [0.7512], 'high': [0.8734]})
    fig = plot_roc_curves(yt, ys, labels, ci=ci, path=tmp_path / 'sub' / 'roc.png')
    assert len(fig.axes) == 3 and (tmp_path / 'sub' / 'roc.png').stat().st_size > 0
    assert all(len(ax.get_lines()) == 2 for ax in fig.axes)  # curve + chance diagonal
    texts = [_legend_texts(ax) for ax in fig.axes]
    assert all(len(t) == 1 and t[0].startswith('AUC') for t in texts)
    assert texts[1] == ['AUC 0.812 [0.751, 0.873]']
    from sklearn.metrics import roc_auc_score
    assert texts[0] == [f'AUC {roc_auc_score(yt[:, 0], ys[:, 0]):.3f}']  # no CI row: plain AUC


def test_roc_single_axes_and_ci_as_index(scores):
    yt, ys, labels = scores
    ci = pd.DataFrame({'auc': [0.7, 0.8, 0.9], 'low': [0.6, 0.7, 0.8], 'high': [0.8, 0.9, 1.0]},
                      index=pd.Index(labels, name='label'))
    fig = plot_roc_curves(yt, ys, labels, ci=ci, layout='single')
    assert len(fig.axes) == 1
    texts = _legend_texts(fig.axes[0])
    assert len(texts) == 3 and all('AUC' in t for t in texts) and texts[2] == 'Hernia: AUC 0.900 [0.800, 1.000]'


def test_roc_masked_and_single_class_columns(scores):
    yt, ys, labels = scores
    yt = yt.copy(); yt[:10, 0] = np.nan; yt[:, 2] = 0
    fig = plot_roc_curves(yt, ys, labels)
    assert len(fig.axes[0].get_lines()) == 2 and len(fig.axes[2].get_lines()) == 1  # Hernia: no curve, only chance
    assert 'one class only' in fig.axes[2].texts[0].get_text()


def test_roc_bad_inputs(scores):
    yt, ys, labels = scores
    with pytest.raises(CXRDataError, match='3 labels'): plot_roc_curves(yt, ys[:, :2], labels)
    with pytest.raises(CXRDataError, match='2 labels'): plot_roc_curves(yt, ys, labels[:2])
    with pytest.raises(CXRDataError, match=r"\['high'\]"):
        plot_roc_curves(yt, ys, labels, ci=pd.DataFrame({'label': ['Hernia'], 'auc': [.5], 'low': [.4]}))
    with pytest.raises(CXRDataError, match='layout'): plot_roc_curves(yt, ys, labels, layout='stacked')


def test_cam_grid_boxes(tmp_path):
    imgs = [np.zeros((32, 32), np.uint8), np.full((32, 48, 3), 0.5, np.float32), np.zeros((16, 16), np.uint8)]
    cams = [np.ones((8, 8)) * 0.5, np.zeros((32, 48)), np.eye(16)]
    table = pd.DataFrame({'image': ['a', 'a'], 'label': ['Mass', 'Nodule'],
                          'x_min': [1., 10.], 'y_min': [2., 12.], 'x_max': [8., 20.], 'y_max': [9., 30.]})
    fig = plot_cam_grid(imgs, cams, ['a', 'b', 'c'], boxes=[table, np.array([[0, 0, 5, 5]]), None],
                        path=tmp_path / 'grid.pdf', ncols=2)
    assert len(fig.axes) == 3 and (tmp_path / 'grid.pdf').is_file()
    assert [len(ax.patches) for ax in fig.axes] == [2, 1, 0]
    r = fig.axes[0].patches[1]
    assert (r.get_x(), r.get_y(), r.get_width(), r.get_height()) == (10., 12., 10., 18.)  # XYXY -> xywh
    assert [t.get_text() for t in fig.axes[0].texts] == ['Mass', 'Nodule']
    assert [ax.get_title() for ax in fig.axes] == ['a', 'b', 'c']


def test_cam_grid_bad_inputs():
    img, cam = [np.zeros((8, 8), np.uint8)], [np.zeros((8, 8))]
    with pytest.raises(CXRDataError, match='1 images, 2 cams'): plot_cam_grid(img, cam * 2, ['x'])
    with pytest.raises(CXRDataError, match=r'boxes\[0\] lacks'): plot_cam_grid(img, cam, ['x'], boxes=[pd.DataFrame({'x_min': [1]})])
    with pytest.raises(CXRDataError, match=r'boxes\[0\] has shape \(3,\)'): plot_cam_grid(img, cam, ['x'], boxes=[[1, 2, 3]])


def test_training_curves(tmp_path):
    h = pd.DataFrame({'epoch': [1, 2, 3], 'train_loss': [.9, .7, .6], 'val_loss': [.8, .75, .78],
                      'auroc': [.6, .7, .65], 'lr': [1e-3, 1e-3, 1e-4]})
    fig = plot_training_curves(h, path=tmp_path / 'h.png')
    assert len(fig.axes) == 3 and (tmp_path / 'h.png').is_file()
    assert _legend_texts(fig.axes[0]) == ['train loss', 'val loss']
    assert _legend_texts(fig.axes[1]) == ['val auroc', 'best epoch 2 (0.700)']
    assert fig.axes[2].get_yscale() == 'log'
    fig = plot_training_curves(h.drop(columns='lr'), metric='val_loss', mode='min')
    assert len(fig.axes) == 2 and _legend_texts(fig.axes[1])[1] == 'best epoch 2 (0.750)'
    with pytest.raises(CXRDataError, match=r"\['train_loss'\]"): plot_training_curves(h.drop(columns='train_loss'))
    with pytest.raises(CXRDataError, match="'accuracy'"): plot_training_curves(h, metric='accuracy')


@pytest.fixture
def ours():
    return pd.DataFrame({'label': ['Effusion', 'Mass', 'Pleural Thickening'], 'auc': [0.80, 0.70, 0.60],
                         'low': [0.75, 0.62, 0.50], 'high': [0.85, 0.78, 0.70]})


def test_paper_vs_reproduced_arithmetic_and_csv(ours, tmp_path):
    paper = pd.Series({'Effusion': 0.85, 'Pleural_Thickening': 0.55, 'Hernia': 0.90, 'Average': 0.80})
    t = paper_vs_reproduced(ours, paper, 'seed 002 (002_ebbdae81f59a347f.txt), Table 4', 'profile=smoke, seed 0',
                            path=tmp_path / 'out' / 'cmp.csv')
    assert tuple(t.columns) == COMPARISON_COLUMNS
    assert list(t.label) == ['Effusion', 'Mass', 'Pleural_Thickening', 'Hernia', 'Average']  # alias mapped, one-sided kept
    d = t.set_index('label')
    assert d.loc['Effusion', 'difference'] == pytest.approx(-0.05)
    assert d.loc['Pleural_Thickening', 'difference'] == pytest.approx(0.05)
    assert np.isnan(d.loc['Mass', 'paper']) and np.isnan(d.loc['Mass', 'difference']) and d.loc['Mass', 'ci_low'] == 0.62
    assert np.isnan(d.loc['Hernia', 'ours']) and d.loc['Hernia', 'paper'] == 0.90
    assert d.loc['Average', 'paper'] == 0.80                                # printed average, not the mean of rows
    assert d.loc['Average', 'ours'] == pytest.approx(0.70) and np.isnan(d.loc['Average', 'ci_low'])
    assert d.loc['Average', 'difference'] == pytest.approx(-0.10)
    assert t.attrs['paired_mean_difference'] == pytest.approx(0.0)
    assert 'Table 4' in t.attrs['caption'] and 'profile=smoke' in t.attrs['caption']
    back = pd.read_csv(tmp_path / 'out' / 'cmp.csv')
    assert len(back) == 5 and set(back.paper_source) == {'seed 002 (002_ebbdae81f59a347f.txt), Table 4'}
    assert set(back.setup) == {'profile=smoke, seed 0'} and back.difference.iloc[0] == pytest.approx(-0.05)


def test_paper_vs_reproduced_reported_average_and_source_from_attrs(ours):
    o = pd.concat([ours, pd.DataFrame({'label': ['Average'], 'auc': [0.71], 'low': [0.66], 'high': [0.76]})])
    paper = pd.Series({'Effusion': 0.85, 'Mass': 0.75})
    paper.attrs['source'] = 'seed 002, Table 4'
    t = paper_vs_reproduced(o, paper, None, 'setup')
    avg = t.set_index('label').loc['Average']
    assert (avg.ours, avg.ci_low, avg.ci_high) == (0.71, 0.66, 0.76) and avg.paper == pytest.approx(0.80)
    assert t.attrs['paper_source'] == 'seed 002, Table 4'
    s = paper_vs_reproduced(pd.Series({'Effusion': 0.8}), pd.Series({'Effusion': 0.75}), 'src', 'setup')
    assert s.ours.iloc[0] == 0.8 and np.isnan(s.ci_low.iloc[0])


def test_style_comparison(ours):
    t = paper_vs_reproduced(ours, pd.Series({'Effusion': 0.85, 'Mass': 0.60}), 'seed X, Table Y', 'setup Z')
    html = style_comparison(t).to_html()
    assert '0.800 [0.750, 0.850]' in html and '-0.050' in html and '+0.100' in html
    assert '#cf222e' in html and '#1a7f37' in html and 'seed X, Table Y' in html
    titled = style_comparison(t, title='table4').to_html()
    assert titled.count('seed X, Table Y') == 1 and '<caption>table4: AUROC, paper vs reproduced.' in titled


def test_paper_vs_reproduced_bad_inputs(ours):
    p = pd.Series({'Effusion': 0.8})
    with pytest.raises(CXRDataError, match='paper_source is empty'): paper_vs_reproduced(ours, p, '', 'setup')
    with pytest.raises(CXRDataError, match='setup is empty'): paper_vs_reproduced(ours, p, 'src', ' ')
    with pytest.raises(CXRDataError, match=r"\['auc'\]"): paper_vs_reproduced(ours.drop(columns='auc'), p, 'src', 'setup')
    dup = pd.concat([ours, ours.iloc[:1]], ignore_index=True)
    with pytest.raises(CXRDataError, match="'Effusion' more than once"): paper_vs_reproduced(dup, p, 'src', 'setup')
