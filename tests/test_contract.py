"""The data contract (cxr_notebooks.data.contract): one sample dict, built by `make_sample`, served by every dataset."""
import numpy as np
import pandas as pd
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from cxr_notebooks.data.contract import BOX_COLUMNS, IMAGE_COLUMNS, SAMPLE_KEYS, XYXY_COLUMNS, make_sample
from cxr_notebooks.data.datasets import CXRDataset
from cxr_notebooks.data.synth import PhantomDataset, write_phantom_folder


def _check(s, n_labels, channels, size):
    "Assert that `s` is a contract sample dict."
    assert set(s) <= set(SAMPLE_KEYS) and set(SAMPLE_KEYS[:4]) <= set(s)
    assert isinstance(s['image'], tv_tensors.Image) and s['image'].dtype == torch.float32
    assert s['image'].shape == (channels, *size) and 0 <= s['image'].min() and s['image'].max() <= 1
    for k in ('label', 'label_mask'): assert s[k].dtype == torch.float32 and s[k].shape == (n_labels,)
    assert isinstance(s['index'], int)
    if 'boxes' in s:
        assert isinstance(s['boxes'], tv_tensors.BoundingBoxes) and s['boxes'].canvas_size == size
        assert s['box_labels'].dtype == torch.int64 and len(s['box_labels']) == len(s['boxes'])
        assert ((s['box_labels'] >= 0) & (s['box_labels'] < n_labels)).all()
    if 'mask' in s:
        assert isinstance(s['mask'], tv_tensors.Mask) and s['mask'].dtype == torch.uint8 and s['mask'].shape == (1, *size)
        assert set(s['mask'].unique().tolist()) <= {0, 1}


def test_constants():
    assert BOX_COLUMNS == ('image', 'label', 'x_min', 'y_min', 'x_max', 'y_max') and XYXY_COLUMNS == BOX_COLUMNS[2:]
    assert IMAGE_COLUMNS == ('image', 'path', 'patient_id') and SAMPLE_KEYS[:4] == ('image', 'label', 'label_mask', 'index')


def test_every_dataset_serves_the_contract(tmp_path):
    ph = PhantomDataset(4, 64, ('Effusion', 'Pneumothorax'), seed=2)
    table, boxes = write_phantom_folder(tmp_path, 4, 64, ('Effusion', 'Pneumothorax'), seed=2)
    cx = CXRDataset(table, ['Effusion', 'Pneumothorax'], boxes=boxes, channels=1)
    for i in range(4):
        a, b = ph[i], cx[i]
        _check(a, 2, 1, (64, 64)); _check(b, 2, 1, (64, 64))
        assert set(a) == set(b) == set(SAMPLE_KEYS)
        for k in ('image', 'label', 'label_mask', 'boxes', 'box_labels', 'mask'): assert torch.equal(a[k], b[k]), (i, k)
    _check(CXRDataset(table, ['Effusion'], image_size=32)[0], 1, 3, (32, 32))


def test_samples_do_not_alias_the_dataset():
    ph = PhantomDataset(3, 64, seed=0)
    s = ph[0]; s['label'] += 5
    assert ph.labels.max() <= 1 and ph[0]['label'].max() <= 1


def test_boxes_pushed_off_are_dropped_with_their_labels():
    "A crop keeps pixels 10..29: boxes 0 and 1 shrink to nothing and go, 2 and 3 are clamped, labels stay aligned."
    img = np.zeros((40, 40), np.uint8)
    boxes = [[0, 0, 10, 10], [30, 30, 40, 40], [5, 25, 15, 35], [28, 2, 38, 12]]
    s = make_sample(img, np.zeros(4, np.float32), 0, boxes=boxes, box_labels=[0, 1, 2, 3], transform=v2.CenterCrop((20, 20)))
    assert s['box_labels'].tolist() == [2, 3] and s['boxes'].tolist() == [[0, 15, 5, 20], [18, 0, 20, 2]]
    assert s['boxes'].canvas_size == (20, 20)
    none = make_sample(img, np.zeros(4, np.float32), 0, boxes=np.zeros((0, 4)), box_labels=[], transform=v2.CenterCrop((20, 20)))
    assert none['boxes'].shape == (0, 4) and none['box_labels'].shape == (0,)
