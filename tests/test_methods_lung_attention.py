"""Seed 000's method module: prior regions, the cached lung boxes and prior masks, the NIH task splits (sizes pinned on
the full Data_Entry_2017_v2020 metadata), the training step and the metrics with a validation threshold."""
import os
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from cxr_notebooks.core import CXRDataError
from cxr_notebooks.data.datasets import read_image
from cxr_notebooks.data.nih import embedded_data_entry
from cxr_notebooks.data.splits import check_patient_disjoint
from cxr_notebooks.data.synth import write_phantom_folder
from cxr_notebooks.losses.attention import AttentionLoss
from cxr_notebooks.methods import lung_attention as la


def test_prior_regions_follow_the_authors_rules():
    box, S = (10, 20, 50, 60), 64                            # x0, y0, x1, y1 (exclusive)
    eff, ptx = la.prior_region(box, 'Effusion', S), la.prior_region(box, 'Pneumothorax', S)
    assert eff[40:60, 10:50].all() and eff.sum() == 20 * 40       # lower half of the box
    assert ptx[20:40, 10:50].all() and ptx.sum() == 20 * 40       # upper half
    sub = la.prior_region(box, 'Subcutaneous emphysema', S)
    assert sub[20:, :10].all() and sub[20:, 50:].all() and sub[:20].sum() == 0 and sub[:, 10:50].sum() == 0
    assert la.prior_region(box, 'No Finding', S).sum() == 0
    with pytest.raises(ValueError, match='Effusion'): la.prior_region(box, 'Mass', S)


NIH_SIZES = {  # (No Finding, positives per class, images, patients) of train / val / test on all 112,120 rows
    'effusion': {'train': (2373, 2373, 4746, 3260), 'val': (792, 792, 1584, 1101), 'test': (790, 790, 1580, 1059)},
    'pneumothorax': {'train': (1318, 1318, 2636, 1795), 'val': (438, 438, 876, 560), 'test': (438, 438, 876, 576)},
    '3class': {'train': (1259, 1259, 3777, 2431), 'val': (415, 415, 1245, 751), 'test': (520, 520, 1560, 941)},
}


@pytest.fixture(scope='module')
def entry():
    return embedded_data_entry()


@pytest.mark.parametrize('task', sorted(NIH_SIZES))
def test_nih_task_split_sizes_are_pinned_and_patient_disjoint(entry, task):
    parts = la.nih_task_split(entry, task)
    classes = la.task_classes(task)
    check_patient_disjoint(parts)
    for name, (nf, pos, images, patients) in NIH_SIZES[task].items():
        t = parts[name]
        assert (int(t['No Finding'].sum()), int(t[classes[-1]].sum()), len(t), t['patient_id'].nunique()) == (nf, pos, images, patients)
        assert t['finding_labels'].isin(classes).all()                       # single-label images only
        assert (t[list(classes)].sum(axis=1) == 1).all()                           # one-hot
    single_pos = entry[entry['finding_labels'].isin(classes[1:])]
    pos_patients = set(single_pos['patient_id'])
    nf = pd.concat(parts.values()).query("finding_labels == 'No Finding'")
    assert not (set(nf['patient_id']) & pos_patients)                        # No Finding from patients without a positive image


def test_positives_are_cut_in_file_order_with_patients_kept_whole(entry):
    parts = la.nih_task_split(entry, 'pneumothorax')
    pos = entry[entry['finding_labels'] == 'Pneumothorax'].reset_index(drop=True)
    rank = {img: i for i, img in enumerate(pos['image'])}
    first = {n: min(rank[i] for i in t.loc[t['Pneumothorax'] == 1, 'image']) for n, t in parts.items()}
    assert first['train'] == 0 and sum(len(t) for t in parts.values()) // 2 == len(pos)   # every positive is used once
    # a patient goes to the part of its first positive image: each part's earliest image starts a new patient
    for n, t in parts.items():
        assert pos.loc[rank[pos['image'][first[n]]], 'patient_id'] in set(t['patient_id'])


def test_lung_boxes_are_cached_and_recomputed_when_the_file_changes(tmp_path):
    table, _ = write_phantom_folder(tmp_path / 'ph', 4, size=48, classes=('Effusion',), prevalence=1.0, multi_label=False)
    boxes = la.lung_boxes(table, 48, tmp_path / 'cache')
    f = tmp_path / 'cache' / 'lung_boxes_48px.csv'
    assert boxes['source'].eq('mask').all() and len(pd.read_csv(f)) == 4
    stamp = f.stat().st_mtime_ns
    assert la.lung_boxes(table, 48, tmp_path / 'cache').equals(boxes) and f.stat().st_mtime_ns == stamp      # reused
    os.utime(table['path'][0], ns=(1, 1))                                                                   # the image "changed"
    la.lung_boxes(table, 48, tmp_path / 'cache')
    assert f.stat().st_mtime_ns != stamp and len(pd.read_csv(f)) == 4


class Centre:
    "A stand-in segmenter: the same central lung square (a quarter of the side in from each edge) in every image."
    identity = 'centre-square:v1'
    def __call__(self, images):
        m = np.zeros_like(images); s = images.shape[-1] // 4; m[:, s:-s, s:-s] = 1; return m


def _unmasked_phantoms(tmp_path, n=3):
    table, _ = write_phantom_folder(tmp_path / 'ph', n, size=48, classes=('Effusion',), prevalence=1.0, multi_label=False)
    return table.drop(columns='mask_path')


def test_switching_segmenter_recomputes_the_boxes_and_keeps_both(tmp_path):
    "Defect: the lung-box cache was keyed by the image only, so boxes cached with the U-Net came back for another segmenter."
    table, cache = _unmasked_phantoms(tmp_path), tmp_path / 'cache'
    unet = la.lung_boxes(table, 48, cache)                                            # the default: the shipped U-Net
    assert unet['source'].str.startswith('unet:128px:').all()
    other = la.lung_boxes(table, 48, cache, Centre())
    assert other[['x0', 'y0', 'x1', 'y1']].values.tolist() == [[12, 12, 36, 36]] * 3 and other['source'].eq('centre-square:v1').all()
    f = cache / 'lung_boxes_48px.csv'
    stamp = f.stat().st_mtime_ns
    assert la.lung_boxes(table, 48, cache, 'unet').equals(unet) and f.stat().st_mtime_ns == stamp   # back: the U-Net's, from the cache
    assert la.lung_boxes(table, 48, cache, Centre()).equals(other) and f.stat().st_mtime_ns == stamp
    assert len(pd.read_csv(f)) == 6
    t = la.with_prior_masks(table.assign(**{'No Finding': 0.0}), la.TASKS['effusion'], 48, cache, Centre())
    assert t['lung_box'].tolist() == [(12, 12, 36, 36)] * 3


def test_a_cache_without_segmenter_identities_is_recomputed(tmp_path):
    "A lung-box file written before boxes carried their segmenter says nothing about which one drew them: not reused."
    table, cache = _unmasked_phantoms(tmp_path), tmp_path / 'cache'
    cache.mkdir()
    st = [os.stat(p) for p in table['path']]
    pd.DataFrame({'path': [os.path.abspath(p) for p in table['path']], 'mtime_ns': [s.st_mtime_ns for s in st],
                  'bytes': [s.st_size for s in st], 'x0': 1, 'y0': 1, 'x1': 2, 'y1': 2, 'source': 'unet'}).to_csv(cache / 'lung_boxes_48px.csv', index=False)
    b = la.lung_boxes(table, 48, cache, Centre())
    assert b[['x0', 'y0', 'x1', 'y1']].values.tolist() == [[12, 12, 36, 36]] * 3
    assert set(pd.read_csv(cache / 'lung_boxes_48px.csv')['segmenter']) == {'centre-square:v1'}


def test_tables_with_lung_masks_never_build_the_segmenter(tmp_path, monkeypatch):
    "The phantoms carry their lung masks: segmenter='xrv' needs no torchxrayvision weights there; without masks it stops at once."
    from cxr_notebooks.models import xrv as X
    from cxr_notebooks.models.backbones import PretrainedWeightsUnavailable
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))                              # an empty torchxrayvision cache
    monkeypatch.setattr(X, '_host_reachable', lambda url, timeout=3.0: False)        # offline, whatever this machine's network
    table, _ = write_phantom_folder(tmp_path / 'ph', 2, size=48, classes=('Effusion',), prevalence=1.0, multi_label=False)
    assert la.lung_boxes(table, 48, tmp_path / 'cache', 'xrv')['source'].eq('mask').all()
    with pytest.raises(PretrainedWeightsUnavailable, match='chestx_det.PSPNet'):
        la.lung_boxes(table.drop(columns='mask_path'), 48, tmp_path / 'cache', 'xrv')


def test_empty_lung_mask_falls_back_to_the_whole_image(tmp_path):
    table, _ = write_phantom_folder(tmp_path / 'ph', 1, size=48, classes=('Effusion',), prevalence=1.0, multi_label=False)
    import cv2
    cv2.imwrite(table['mask_path'][0], np.zeros((48, 48), np.uint8))
    b = la.lung_boxes(table, 48, tmp_path / 'cache')
    assert tuple(b.iloc[0][['x0', 'y0', 'x1', 'y1']]) == (0, 0, 48, 48) and b['source'][0].startswith('fallback')


def test_prior_masks_are_written_per_image_and_finding(tmp_path):
    parts = la.phantom_task_split(tmp_path / 'ph', '3class', 24, 48)
    t = la.with_prior_masks(parts['train'], la.TASKS['3class'], 48, tmp_path / 'cache')
    for _, r in t.iterrows():
        expected = la.prior_region(r.lung_box, r.finding, 48)
        assert np.array_equal(read_image(r.mask_path) > 127, expected.astype(bool))
    assert set(t['finding'].dropna()) <= {'Effusion', 'Pneumothorax'} and t['finding'].isna().sum() == (t['No Finding'] == 1).sum()


def test_byo_class_folders_make_the_parts(tmp_path):
    import cv2
    for split in ('train', 'val', 'test'):
        for c in ('No Finding', 'Effusion'):
            (tmp_path / split / c).mkdir(parents=True)
            for k in range(2): cv2.imwrite(str(tmp_path / split / c / f'{split}_{c[:2]}_{k}.png'), np.full((40, 40), 90, np.uint8))
    parts = la.byo_task_split(tmp_path, 'effusion')
    assert {k: len(v) for k, v in parts.items()} == {'train': 4, 'val': 4, 'test': 4}
    assert parts['train']['finding_labels'].tolist().count('Effusion') == 2
    with pytest.raises(CXRDataError, match='Pneumothorax'): la.byo_task_split(tmp_path, 'pneumothorax')


class Tiny(nn.Module):
    def __init__(self):
        super().__init__(); self.conv, self.head = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4, 2)
    def forward(self, x): return self.head(torch.relu(self.conv(x)).mean((2, 3)))


def _step_grad(net, batch, loss_fn):
    net.zero_grad(); net.train()
    loss, out = la.AttentionStep(layer=net.conv)(net, batch, loss_fn); loss.backward()
    return torch.cat([p.grad.flatten() for p in net.parameters()]), out


def test_step_published_trains_on_lambda_ce_only_and_differentiable_does_not():
    torch.manual_seed(1)
    net = Tiny()
    batch = {'image': torch.randn(4, 1, 12, 12), 'label': torch.eye(2)[[1, 0, 1, 1]], 'mask': torch.zeros(4, 1, 12, 12, dtype=torch.uint8)}
    batch['mask'][:, :, :6] = 1
    g_ce, _ = _step_grad(net, batch, AttentionLoss(1.0))
    g_pub, out = _step_grad(net, batch, AttentionLoss(0.25, 'published'))
    g_dif, _ = _step_grad(net, batch, AttentionLoss(0.25, 'differentiable'))
    torch.testing.assert_close(g_pub, 0.25 * g_ce)
    assert (g_dif - 0.25 * g_ce).abs().max() > 1e-6
    assert set(out['loss_terms']) == {'ce', 'attention'} and out['logits'].shape == (4, 2)


def test_step_takes_the_adaptive_lambda_from_the_learners_epoch():
    "Defect found while building: the step counted epochs itself, so a resumed run restarted adaptive λ at 1."
    net, step = Tiny(), la.AttentionStep(layer='conv')
    batch = {'image': torch.randn(2, 1, 8, 8), 'label': torch.eye(2)[[1, 0]], 'mask': torch.ones(2, 1, 8, 8, dtype=torch.uint8)}
    net.eval()
    loss_fn = AttentionLoss('adaptive')
    with torch.no_grad():
        first = step(net, {**batch, 'epoch': 1}, loss_fn)
        eleventh = step(net, {**batch, 'epoch': 11}, loss_fn)
    ce, att = (float(first[1]['loss_terms'][k]) for k in ('ce', 'attention'))
    assert float(first[0]) == pytest.approx(ce)                                  # epoch 1: λ = 1
    assert float(eleventh[0]) == pytest.approx(0.77 * ce + 0.23 * att)          # epoch 11: λ = 1 - 0.023 * 10
    net.eval()
    with torch.no_grad():
        loss, logits = step(net, batch, None)
    assert loss is None and logits.shape == (2, 2)
    with torch.no_grad():                                      # validation with a loss: the attention term is still measured
        loss, out = step(net, batch, AttentionLoss(0.5))
    assert not loss.requires_grad and 0 <= float(out['loss_terms']['attention']) <= 1


def test_metrics_with_validation_threshold():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([[.9, .1], [.7, .3], [.4, .6], [.45, .55], [.2, .8], [.1, .9]])
    thr = la.validation_threshold(y, p)
    assert thr == pytest.approx(0.55)
    s = la.seed000_scores(y, p, thr)
    assert (s['sensitivity'], s['specificity'], s['accuracy']) == (1.0, pytest.approx(2 / 3), pytest.approx(5 / 6))
    assert s['dp'] == np.inf and s['youden'] == pytest.approx(2 / 3)
    three = la.seed000_scores(np.array([0, 1, 2, 2]), np.eye(3)[[0, 1, 2, 1]])
    assert three['sensitivity'] == pytest.approx((1 + 1 + 0.5) / 3) and three['accuracy'] == 0.75
    assert la.validation_threshold(np.array([0, 1, 2]), np.eye(3)) is None


@pytest.mark.slow
def test_train_lung_attention_runs_one_epoch_on_phantoms(tmp_path):
    classes = la.task_classes('pneumothorax')
    parts = {k: la.with_prior_masks(t, classes, 32, tmp_path / 'cache')
             for k, t in la.phantom_task_split(tmp_path / 'ph', 'pneumothorax', 40, 32).items()}
    res = la.train_lung_attention(parts['train'], parts['val'], classes, AttentionLoss(0.5, 'differentiable'), tmp_path / 'run',
                                  'mobilenetv2_100', 32, 8, 1, lr=1e-3, cam_layer='blocks[2]', progress=False, num_workers=0, device='cpu')
    h = res.history
    assert {'train_ce', 'train_attention', 'val_attention', 'val_accuracy'} <= set(h.columns) and h['train_attention'].iloc[0] > 0
    p = la.predict_probs(res.stage_models[-1], parts['test'], classes, 32, num_workers=0)
    assert p.shape == (len(parts['test']), 2) and np.allclose(p.sum(1), 1, atol=1e-5)
    cams = la.cam_in_prior(res.stage_models[-1], parts['test'], classes, 32, layer='blocks[2]', num_workers=0)
    assert len(cams) == int(parts['test']['Pneumothorax'].sum()) and cams['in_prior'].between(0, 1).all()
