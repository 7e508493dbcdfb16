"Contracts, pinned facts and error paths of cxr_notebooks.metrics.localization."
import numpy as np
import pandas as pd
import pytest

from cxr_notebooks.core import CXRDataError, embedded_data_dir
from cxr_notebooks.data.labels import NIH_BOX_LABELS, canonical_label
from cxr_notebooks.data.contract import BOX_COLUMNS
from cxr_notebooks.metrics.localization import (box_ior, box_iou, heatmap_to_box, heatmap_to_boxes,
                                        localization_accuracy, localization_scores)


def _table(rows):
    return pd.DataFrame(rows, columns=list(BOX_COLUMNS))


def test_iou_ior_by_hand():
    assert box_iou((0, 0, 10, 10), (5, 5, 15, 15)) == pytest.approx(25 / 175)
    assert box_ior((0, 0, 10, 10), (5, 5, 15, 15)) == pytest.approx(25 / 100)
    assert box_ior((0, 0, 10, 10), (0, 0, 20, 20)) == 1.0 and box_ior((0, 0, 20, 20), (0, 0, 10, 10)) == 0.25
    assert box_iou((0, 0, 4, 4), (4, 0, 8, 4)) == 0.0  # touching edges share no area
    assert box_iou((1, 1, 1, 1), (1, 1, 1, 1)) == 0.0 and box_ior((1, 1, 1, 1), (0, 0, 2, 2)) == 0.0
    np.testing.assert_allclose(box_iou([[0, 0, 2, 2], [0, 0, 1, 2]], [0, 0, 2, 2]), [1, .5])


def test_box_errors():
    with pytest.raises(CXRDataError, match='y_max < y_min'): box_iou((0, 5, 1, 0), (0, 0, 1, 1))
    with pytest.raises(CXRDataError, match='detected box has shape'): box_ior((0, 0, 1), (0, 0, 1, 1))


def test_heatmap_box_of_known_rectangle_and_blob():
    h = np.zeros((50, 80)); h[10:20, 30:45] = 1.0; h[40:42, 0:3] = 0.9
    assert heatmap_to_box(h, 0.5) == (30, 10, 45, 20)
    assert heatmap_to_boxes(h, 0.5) == [(30, 10, 45, 20), (0, 40, 3, 42)]
    assert heatmap_to_box(h, 0.95) == (30, 10, 45, 20)
    assert heatmap_to_box(h * 10, 5, relative=False) == (30, 10, 45, 20)
    assert heatmap_to_box(h, 0.5, image_size=(160, 100)) == (60, 20, 90, 40)
    yy, xx = np.mgrid[:64, :64]
    blob = np.exp(-((xx - 40) ** 2 + (yy - 20) ** 2) / (2 * 4 ** 2))
    assert heatmap_to_box(blob, 0.5) == (36, 16, 45, 25)
    assert heatmap_to_box(np.zeros((5, 5)), 0.5) is None and heatmap_to_box(h, 2, relative=False) is None


def test_diagonal_pixels_are_one_component():
    h = np.eye(6)
    assert heatmap_to_boxes(h, 0.5) == [(0, 0, 6, 6)]


def test_heatmap_errors():
    with pytest.raises(CXRDataError, match='expected a 2-D'): heatmap_to_box(np.zeros((2, 3, 3)), .5)
    with pytest.raises(CXRDataError, match='1 NaN/inf'): heatmap_to_box(np.array([[0, np.inf]]), .5)


def test_localization_accuracy_contract():
    truth = _table([('a', 'Mass', 0, 0, 10, 10), ('b', 'Mass', 0, 0, 10, 10), ('c', 'Nodule', 0, 0, 10, 10),
                    ('d', 'Hernia', 0, 0, 1, 1)])
    pred = _table([('a', 'Mass', 0, 0, 10, 10), ('b', 'Mass', 0, 0, 5, 5), ('c', 'Mass', 0, 0, 10, 10)])
    sc = localization_scores(pred, truth, ['Mass', 'Nodule'])
    assert sc[['image', 'label']].values.tolist() == [['a', 'Mass'], ['b', 'Mass'], ['c', 'Nodule']]
    assert sc.iou.tolist() == [1, .25, 0] and sc.ior.tolist() == [1, 1, 0]  # wrong class on c is a miss
    t = localization_accuracy(pred, truth, ['Mass', 'Nodule'])
    assert t.t_iou.tolist() == [.1, .2, .3, .4, .5, .6, .7] and t.t_ior.isna().all()
    assert t.Mass.tolist() == [1, 1, .5, .5, .5, .5, .5] and (t.Nodule == 0).all()
    either = localization_accuracy(pred, truth, ['Mass', 'Nodule'], t_iou=.5, t_ior=.9)
    assert either[['Mass', 'Nodule', 'Mean']].values.tolist() == [[1, 0, .5]]
    grid = localization_accuracy(pred, truth, ['Mass', 'Nodule', 'Edema'], t_iou=[.1, .5], t_ior=[.5, .99, 1.0])
    assert len(grid) == 6 and grid.Edema.isna().all() and grid.Mean.notna().all()
    assert localization_accuracy(pred, truth, ['Mass'], t_ior=1.0).Mass.item() == 0  # strict '>'


def test_localization_table_errors():
    ok = _table([('a', 'Mass', 0, 0, 1, 1)])
    with pytest.raises(CXRDataError, match=r"pred_boxes lacks column\(s\) \['label'\]"):
        localization_accuracy(ok.drop(columns='label'), ok)
    bad = ok.assign(x_max=['wide'])
    with pytest.raises(CXRDataError, match="true_boxes column 'x_max' row 0"): localization_accuracy(ok, bad)
    with pytest.raises(CXRDataError, match='x_max < x_min'): localization_accuracy(ok.assign(x_max=-1.0), ok)


def test_nih_box_table_feeds_truth():
    raw = pd.read_csv(embedded_data_dir() / 'nih' / 'BBox_List_2017.csv')
    x, y, w, h = (raw.iloc[:, i] for i in range(2, 6))
    truth = pd.DataFrame({'image': raw['Image Index'], 'label': [canonical_label(v) for v in raw['Finding Label']],
                          'x_min': x, 'y_min': y, 'x_max': x + w, 'y_max': y + h})
    t = localization_accuracy(truth, truth, t_iou=[.1, .7], t_ior=None)  # the truth predicts itself
    assert list(t.columns) == ['t_iou', 't_ior', *NIH_BOX_LABELS, 'Mean'] and (t[list(NIH_BOX_LABELS)] == 1).all().all()
    assert len(localization_scores(truth, truth)) == 984
    shrunk = truth.assign(x_max=truth.x_min + w / 2)  # half the width: IoU 0.5, IoR 1
    t2 = localization_accuracy(shrunk, truth, t_iou=[.4, .6])
    assert t2.Mean.tolist() == [1, 0]
    assert localization_accuracy(shrunk, truth, t_iou=.6, t_ior=.9).Mean.item() == 1
