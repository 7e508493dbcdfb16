"cxr_notebooks.eval.predictions: CAM examples on the embedded boxed NIH images."
import numpy as np
import pytest
import cxr_notebooks.eval.predictions as ev
from cxr_notebooks.data.labels import NIH_LABELS
from cxr_notebooks.data.nih import nih_sample_table, read_nih_boxes
from cxr_notebooks.core import embedded_data_dir
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
