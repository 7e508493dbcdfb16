"Contract tests for cxr_notebooks.data.synth: phantoms, masks/boxes, dataset, folder writer, learnability."
import time
import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from torchvision.transforms import v2
from cxr_notebooks.core import CXRDataError, seed_everything
from cxr_notebooks.data.labels import NIH_LABELS
from cxr_notebooks.data.contract import BOX_COLUMNS
from cxr_notebooks.data.synth import (SYNTH_LABELS, Phantom, PhantomDataset, make_phantom, mask_to_box,
                                 write_phantom_folder)


def _lung_rows(p: Phantom, m: np.ndarray) -> tuple[int, int]:
    "First row and height of the lung (image half) that holds mask `m`."
    S = m.shape[1]; left = np.flatnonzero(m.any(0))[0] < S // 2
    lung = p.lung_mask[:, :S // 2] if left else p.lung_mask[:, S // 2:]
    r = np.flatnonzero(lung.any(1)); return r[0], r[-1] + 1 - r[0]


def test_labels_are_nih_names():
    assert set(SYNTH_LABELS) <= set(NIH_LABELS) and len(SYNTH_LABELS) == 8
    assert list(SYNTH_LABELS) == [l for l in NIH_LABELS if l in SYNTH_LABELS]


@pytest.mark.parametrize('size', [32, 64, 100, 256])
def test_phantom_contract_and_anatomical_rules(size):
    for seed in range(15):
        p = make_phantom(size, SYNTH_LABELS, seed)
        assert p.image.shape == p.lung_mask.shape == (size, size) and p.image.dtype == p.lung_mask.dtype == np.uint8
        assert set(np.unique(p.lung_mask)) == {0, 1} and cv2.connectedComponents(p.lung_mask)[0] == 3  # two lungs
        assert p.labels == SYNTH_LABELS and tuple(p.boxes.columns) == BOX_COLUMNS
        assert sorted(p.boxes.label) == sorted(SYNTH_LABELS) and (p.boxes.image == p.name).all()
        for r in p.boxes.itertuples():
            m = p.lesion_masks[r.label]
            assert m.dtype == np.uint8 and set(np.unique(m)) == {0, 1}
            assert (r.x_min, r.y_min, r.x_max, r.y_max) == mask_to_box(m)
            if r.label == 'Cardiomegaly':
                assert not (m & p.lung_mask).any(); continue
            assert not (m & (1 - p.lung_mask)).any(), r.label
            y0, h = _lung_rows(p, m)
            if r.label == 'Effusion': assert r.y_min >= y0 + 2 * h / 3
            if r.label == 'Pneumothorax': assert r.y_max <= y0 + h / 3
        assert p.ctr > 0.5
        assert make_phantom(size, (), seed).ctr <= 0.5  # CTR > 0.5 is the cut-off; at 32 px it quantises by ~0.04


def test_nodule_small_mass_larger():
    for seed in range(10):
        p = make_phantom(256, ('Nodule', 'Mass'), seed)
        wn = p.boxes.set_index('label').eval('x_max - x_min')
        assert wn['Nodule'] <= 0.03 * 256 + 1 < wn['Mass']


def test_determinism_seeds_and_counterfactuals():
    a, b = make_phantom(96, ('Effusion', 'Nodule'), 3), make_phantom(96, ['Nodule', 'Effusion', 'Nodule'], 3)
    assert np.array_equal(a.image, b.image) and a.boxes.equals(b.boxes) and a.labels == ('Effusion', 'Nodule')
    assert (make_phantom(96, ('Effusion', 'Nodule'), 4).image != a.image).mean() > 0.5
    only = make_phantom(96, ('Effusion',), 3)  # adding a finding leaves the others' masks unchanged
    assert np.array_equal(only.lesion_masks['Effusion'], a.lesion_masks['Effusion'])


def test_alias_name_and_empty_box_table():
    p = make_phantom(64, 'Infiltrate', 0, name='x.png')
    assert p.labels == ('Infiltration',) and list(p.boxes.image) == ['x.png']
    e = make_phantom(64)
    assert e.labels == () and e.lesion_masks == {} and len(e.boxes) == 0 and tuple(e.boxes.columns) == BOX_COLUMNS
    assert mask_to_box(np.zeros((4, 4), np.uint8)) is None


@pytest.mark.parametrize('kwargs, msg', [
    (dict(findings=('Effusion', 'Flu')), 'make_phantom findings'),
    (dict(findings=('Pneumonia',)), "'Pneumonia'"),
    (dict(size=16), 'size=16'), (dict(size=64.0), 'size=64.0'), (dict(seed=-1), 'seed=-1')])
def test_make_phantom_errors(kwargs, msg):
    with pytest.raises(CXRDataError, match=msg): make_phantom(**kwargs)


def test_dataset_sample_dict():
    ds = PhantomDataset(30, 64, ('Effusion', 'Pneumothorax'), seed=2, channels=3)
    assert len(ds) == 30 and ds.labels.shape == (30, 2) and ds.labels.dtype == np.float32
    for i in (0, 7, 29):
        s = ds[i]
        assert s['image'].shape == (3, 64, 64) and s['image'].dtype == torch.float32
        assert 0 <= s['image'].min() and s['image'].max() <= 1 and torch.equal(s['image'][0], s['image'][2])
        assert torch.equal(s['label'], torch.from_numpy(ds.labels[i])) and torch.equal(s['label_mask'], torch.ones(2))
        assert s['index'] == i and s['mask'].shape == (1, 64, 64) and s['mask'].dtype == torch.uint8
        assert s['boxes'].format.value == 'XYXY' and tuple(s['boxes'].canvas_size) == (64, 64)
        assert sorted(s['box_labels'].tolist()) == np.flatnonzero(ds.labels[i]).tolist()
    assert ds[-1]['index'] == 29
    with pytest.raises(IndexError): ds[30]


def test_dataset_deterministic_per_seed_and_index():
    a = PhantomDataset(20, 48, ('Nodule',), seed=5)
    b = PhantomDataset(40, 48, ('Nodule',), seed=5)  # a longer dataset shares its first samples
    for i in (19, 3, 11):
        assert torch.equal(a[i]['image'], b[i]['image'])
    assert not torch.equal(a[3]['image'], PhantomDataset(20, 48, ('Nodule',), seed=6)[3]['image'])


def test_dataset_prevalence_and_single_label():
    ml = PhantomDataset(400, 32, ('Effusion', 'Mass', 'Nodule'), prevalence=0.3, seed=0)
    assert np.allclose(ml.labels.mean(0), 0.3, atol=0.08)
    sl = PhantomDataset(400, 32, ('Effusion', 'Mass', 'Nodule'), prevalence=0.6, seed=0, multi_label=False)
    assert sl.labels.sum(1).max() == 1 and abs(sl.labels.sum(1).mean() - 0.6) < 0.08
    assert PhantomDataset(50, 32, ('Effusion',), prevalence=0.).labels.sum() == 0


def test_transform_moves_boxes_and_mask():
    plain = PhantomDataset(10, 64, ('Effusion', 'Pneumothorax'), prevalence=1., seed=1)[4]
    t = PhantomDataset(10, 64, ('Effusion', 'Pneumothorax'), prevalence=1., seed=1,
                       transform=v2.Compose([v2.RandomHorizontalFlip(p=1.), v2.Resize(32)]))[4]
    assert t['image'].shape == (1, 32, 32) and t['mask'].shape == (1, 32, 32)
    assert torch.allclose(t['boxes'][:, [2, 0]], (64 - plain['boxes'][:, [0, 2]]) / 2)
    assert torch.equal(t['label'], plain['label'])


@pytest.mark.parametrize('kwargs, msg', [
    (dict(n=-1), 'n=-1'), (dict(n=4, classes=('Effusion', 'Cancer')), 'PhantomDataset classes'),
    (dict(n=4, classes=()), 'non-empty'), (dict(n=4, classes=('Effusion', 'Effusion')), 'distinct'),
    (dict(n=4, prevalence=1.5), 'prevalence=1.5'), (dict(n=4, channels=2), 'channels=2'),
    (dict(n=4, size=8), 'size=8'), (dict(n=4, seed=-3), 'seed=-3')])
def test_dataset_errors(kwargs, msg):
    with pytest.raises(CXRDataError, match=msg): PhantomDataset(**kwargs)


def test_write_phantom_folder(tmp_path):
    table, boxes = write_phantom_folder(tmp_path / 'ph', 7, 64, ('Effusion', 'Pneumothorax'), seed=3)
    assert list(table.columns) == ['image', 'path', 'patient_id', 'Effusion', 'Pneumothorax', 'mask_path', 'Finding Labels']
    assert table.Effusion.dtype == np.float32 and table.patient_id.nunique() == 4
    ds = PhantomDataset(7, 64, ('Effusion', 'Pneumothorax'), seed=3)
    assert np.array_equal(table[['Effusion', 'Pneumothorax']].to_numpy(), ds.labels)
    for i in (0, 6):
        p = ds.phantom(i)
        assert np.array_equal(cv2.imread(table.path[i], cv2.IMREAD_UNCHANGED), p.image)
        assert np.array_equal(cv2.imread(table.mask_path[i], cv2.IMREAD_UNCHANGED), p.lung_mask * 255)
        assert table['Finding Labels'][i] == ('|'.join(p.labels) or 'No Finding')
    csv = pd.read_csv(tmp_path / 'ph' / 'images.csv')
    assert list(csv.image) == list(table.image)
    bcsv = pd.read_csv(tmp_path / 'ph' / 'boxes.csv')
    pd.testing.assert_frame_equal(bcsv, boxes)
    assert len(boxes) == int(ds.labels.sum()) and set(boxes.image) <= set(table.image)
    with pytest.raises(CXRDataError, match='images_per_patient=0'):
        write_phantom_folder(tmp_path / 'x', 2, images_per_patient=0)
    empty, eb = write_phantom_folder(tmp_path / 'e', 0, 32)
    assert len(empty) == 0 and len(eb) == 0 and tuple(eb.columns) == BOX_COLUMNS


def test_effusion_is_learnable_by_a_small_cnn():
    "A 4-layer CNN on 600 64x64 phantoms (Effusion vs none) reaches held-out AUROC >= 0.9 on the CPU."
    from sklearn.metrics import roc_auc_score
    nn = torch.nn
    torch.set_num_threads(2); seed_everything(0)
    t0 = time.perf_counter()

    def tensors(n, seed):
        ds = PhantomDataset(n, 64, ('Effusion',), 0.5, seed)
        x = torch.stack([ds[i]['image'].as_subclass(torch.Tensor) for i in range(n)])
        return (x - 0.5) / 0.25, torch.from_numpy(ds.labels[:, 0])

    (xtr, ytr), (xte, yte) = tensors(600, 11), tensors(300, 12)

    def block(i, o): return [nn.Conv2d(i, o, 3, 2, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]
    net = nn.Sequential(*block(1, 8), *block(8, 16), *block(16, 32), *block(32, 32),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 1))
    epochs = 6
    opt = torch.optim.AdamW(net.parameters(), 3e-3, weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 5e-3, total_steps=epochs * -(-len(xtr) // 32))
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(xtr)).split(32):
            loss = nn.functional.binary_cross_entropy_with_logits(net(xtr[idx]).squeeze(1), ytr[idx])
            opt.zero_grad(); loss.backward(); opt.step(); sched.step()
    net.eval()
    with torch.no_grad(): auc = roc_auc_score(yte.numpy(), net(xte).squeeze(1).numpy())
    print(f'Effusion vs none 64x64: held-out AUROC {auc:.3f}, {time.perf_counter() - t0:.1f} s (data + training)')
    assert auc >= 0.9
