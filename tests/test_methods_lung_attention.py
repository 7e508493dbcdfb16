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
    "Defects: the halves split at (y0 + y1) // 2, not the authors' round(y + h/2); subcutaneous emphysema left out the rows above the box."
    box, S = (10, 22, 50, 61), 64                            # x0, y0, x1, y1 (exclusive): y + h/2 = 41.5, Python rounds it to 42
    eff, ptx = la.prior_region(box, 'Effusion', S), la.prior_region(box, 'Pneumothorax', S)
    assert eff[42:61, 10:50].all() and eff.sum() == 19 * 40       # lower half of the box from row round(41.5) = 42
    assert ptx[22:42, 10:50].all() and ptx.sum() == 20 * 40       # upper half
    assert la.prior_region((10, 21, 50, 60), 'Effusion', S)[:, 10].nonzero()[0].min() == 40   # round(40.5) = 40 (half to even)
    sub = la.prior_region(box, 'Subcutaneous emphysema', S)
    assert sub[:22].all()                                         # every row above the box's top edge, at every column
    assert sub[22:, :10].all() and sub[22:, 50:].all() and sub[22:, 10:50].sum() == 0
    assert sub.sum() == S * S - (S - 22) * 40
    assert la.prior_region(box, 'No Finding', S).sum() == 0
    with pytest.raises(ValueError, match='Effusion'): la.prior_region(box, 'Mass', S)


NIH_SIZES = {  # patient_disjoint: (No Finding, positives per class, images, patients) of train / val / test on all 112,120 rows
    'effusion': {'train': (2373, 2373, 4746, 3260), 'val': (792, 792, 1584, 1101), 'test': (790, 790, 1580, 1059)},
    'pneumothorax': {'train': (1318, 1318, 2636, 1795), 'val': (438, 438, 876, 560), 'test': (438, 438, 876, 576)},
    '3class': {'train': (1259, 1259, 3777, 2431), 'val': (415, 415, 1245, 751), 'test': (520, 520, 1560, 941)},
}


def _authors_count(entry, cls):
    "Images per part of the authors' slicing of `cls`, counted here: round(0.6 n), round(0.2 n), round(0.2 n) (Python's round)."
    n = int((entry['finding_labels'] == cls).sum())
    return {'train': round(0.6 * n), 'val': round(0.2 * n), 'test': round(0.2 * n)}


def _first_image_count(entry, classes, count_class):
    "Positives of `count_class` per part when each patient goes to the part of its first image, counted row by row here."
    pos = entry[entry['finding_labels'].isin(classes)].reset_index(drop=True)
    n, first, out = len(pos), {}, {'train': 0, 'val': 0, 'test': 0}
    for i, (pid, lab) in enumerate(zip(pos['patient_id'].astype(str), pos['finding_labels'])):
        part = 'train' if i < round(0.6 * n) else 'val' if i < round(0.8 * n) else 'test'
        first.setdefault(pid, part)
        out[first[pid]] += lab == count_class
    return out


@pytest.fixture(scope='module')
def entry():
    return embedded_data_entry()


@pytest.mark.parametrize('task', sorted(NIH_SIZES))
def test_patient_disjoint_task_split_sizes_are_pinned_and_patient_disjoint(entry, task):
    parts = la.nih_task_split(entry, task, 'patient_disjoint')
    classes = la.task_classes(task)
    check_patient_disjoint(parts)
    counted = _first_image_count(entry, classes[1:], classes[-1])      # per part: the positives that set its size
    for name, (nf, pos, images, patients) in NIH_SIZES[task].items():
        t = parts[name]
        assert (int(t['No Finding'].sum()), int(t[classes[-1]].sum()), len(t), t['patient_id'].nunique()) == (nf, pos, images, patients)
        assert pos == counted[name] and images == len(classes) * counted[name]
        assert t['finding_labels'].isin(classes).all()                       # single-label images only
        assert (t[list(classes)].sum(axis=1) == 1).all()                           # one-hot
    single_pos = entry[entry['finding_labels'].isin(classes[1:])]
    pos_patients = set(single_pos['patient_id'])
    nf = pd.concat(parts.values()).query("finding_labels == 'No Finding'")
    assert not (set(nf['patient_id']) & pos_patients)                        # No Finding from patients without a positive image


AUTHORS_SIZES = {'effusion': (2373, 791, 791), 'pneumothorax': (1316, 439, 439), '3class': (1316, 439, 439)}   # per class


@pytest.mark.parametrize('task', sorted(AUTHORS_SIZES))
def test_authors_task_split_has_their_exact_sizes_and_swaps(entry, task):
    "Defect: the pinned sizes were not the authors' (their slices have val = test; the 3-class task is 1:1:1 at Pneumothorax's slices)."
    parts = la.nih_task_split(entry, task)                                       # protocol='authors' is the default
    classes = la.task_classes(task)
    counted = _authors_count(entry, classes[-1])                                 # Effusion, or Pneumothorax (binary and 3-class)
    assert tuple(counted.values()) == AUTHORS_SIZES[task]
    for name, t in parts.items():
        assert {c: int(t[c].sum()) for c in classes} == {c: counted[name] for c in classes} and len(t) == len(classes) * counted[name]
        assert t['finding_labels'].isin(classes).all() and (t[list(classes)].sum(axis=1) == 1).all()
    assert len(la.shared_patients(parts)) == 0 and parts['train'].attrs == {'protocol': 'authors', 'skipped_swaps': []}
    sliced = entry.loc[entry['finding_labels'] == classes[-1], 'image'].tolist()
    n_train, n_val = counted['train'], counted['val']
    own = {k: set(parts[k].loc[parts[k][classes[-1]] == 1, 'image']) for k in parts}
    for (pa, a), (pb, b) in la.AUTHORS_SWAPS[classes[-1]]:                       # the named pairs changed parts
        assert a in own[pb] and b in own[pa]
    swapped = {i for pair in la.AUTHORS_SWAPS[classes[-1]] for _, i in pair}
    assert {i for i in sliced[:n_train] if i not in swapped} <= own['train']     # otherwise file-order slices
    assert {i for i in sliced[n_train + n_val:n_train + 2 * n_val] if i not in swapped} <= own['test']
    if task == '3class':                                                         # Effusion: Python's random.sample, seed 42
        assert parts['val'].attrs['protocol'] == 'authors' and int(parts['test']['Effusion'].sum()) == n_val


def test_shared_patients_are_reported_not_hidden():
    "A patient straddling a cut the authors did not swap stays in two parts: reported, not hidden; the missing named swap is said."
    pids = ['1', '1', '2', '2', '3', '4', '4', '5', '6', '7']                  # patient 4 straddles train (6 images) | val
    rows = [dict(image=f'{int(p):08d}_{k:03d}.png', patient_id=p, finding_labels='Effusion') for k, p in enumerate(pids)]
    rows += [dict(image=f'{100 + k:08d}_000.png', patient_id=str(100 + k), finding_labels='No Finding') for k in range(12)]
    parts = la.nih_task_split(pd.DataFrame(rows), 'effusion')
    assert [len(parts[k]) for k in ('train', 'val', 'test')] == [12, 4, 4]
    assert parts['train'].attrs['skipped_swaps'] == ['val 00022233_000.png <-> test 00022245_002.png']
    shared = la.shared_patients(parts)
    assert shared.to_dict('records') == [{'patient_id': '4', 'parts': 'train, val', 'images': '00000004_005.png, 00000004_006.png'}]
    with pytest.raises(CXRDataError, match='leakage'): check_patient_disjoint(parts)
    with pytest.raises(ValueError, match='patient_disjoint'): la.nih_task_split(pd.DataFrame(rows), 'effusion', 'random')


def test_positives_are_cut_in_file_order_with_patients_kept_whole(entry):
    parts = la.nih_task_split(entry, 'pneumothorax', 'patient_disjoint')
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


def test_step_takes_the_cam_of_the_predicted_class_by_default():
    "Defect: the step took Grad-CAM of the true class; the authors' code takes it of the predicted class (argmax)."
    from cxr_notebooks.explain.gradcam import grad_cam
    from cxr_notebooks.losses.attention import attention_term
    torch.manual_seed(1)
    net = Tiny().eval()
    x = torch.randn(8, 1, 12, 12)
    pred = net(x).argmax(1)
    y = 1 - pred                                                              # every label disagrees with the prediction
    assert (y == 1).all()                                                     # all positive, all called No Finding
    batch = {'image': x, 'label': torch.eye(2)[y], 'mask': torch.zeros(8, 1, 12, 12, dtype=torch.uint8)}
    batch['mask'][:, :, :6] = 1
    term = {t: float(la.AttentionStep(net.conv, t)(net, batch, AttentionLoss(0.0))[1]['loss_terms']['attention']) for t in la.CAM_TARGETS}
    for t, idx in (('predicted', pred), ('true', y)):
        cams = grad_cam(net, x, idx, layer=net.conv, create_graph=False)[0].detach()
        assert term[t] == pytest.approx(float(attention_term(cams, batch['mask'], y != 0).mean()), abs=1e-6)
    assert la.AttentionStep().cam_target == 'predicted' and term['predicted'] != pytest.approx(term['true'])
    with pytest.raises(ValueError, match='predicted'): la.AttentionStep(cam_target='label')


class _Scripted:
    "A validation metric that returns the next number of a script each epoch."
    def __init__(self, values): self.values = list(values)
    def __call__(self, labels, probs): return self.values.pop(0)


def _learner(tmp_path, metric, **kw):
    from cxr_notebooks.train.learner import Learner
    x, y = torch.randn(8, 1, 8, 8), torch.eye(2)[[0, 1] * 4]
    dl = [{'image': x, 'label': y}]
    net = Tiny()
    return Learner(net, dl, dl, nn.CrossEntropyLoss(), torch.optim.Adam(net.parameters(), 1e-3), metric=('val_accuracy', metric),
                   out_dir=tmp_path, progress=False, activation='softmax', seed=0,
                   step=lambda m, b, f: (None, m(b['image'])) if f is None else (f(m(b['image']), b['label'].argmax(1)), m(b['image'])), **kw)


def test_the_authors_early_stopping_counter_is_never_reset(tmp_path):
    "Schedule 'authors': 3 non-improving epochs in total stop the run; 'corrected': 3 in a row."
    script = [0.5, 0.4, 0.6, 0.5, 0.7, 0.6, 0.8, 0.7, 0.9, 0.85]             # bad epochs 2, 4, 6, 8, 10: 3 in total by epoch 6, never 2 in a row
    authors = {k: v for k, v in la.SCHEDULES['authors'].items() if k != 'early_stopping_patience'}
    corrected = {k: v for k, v in la.SCHEDULES['corrected'].items() if k != 'early_stopping_patience'}
    h_a = _learner(tmp_path / 'a', _Scripted(script), early_stopping_patience=3, **authors).fit(10)
    h_c = _learner(tmp_path / 'c', _Scripted(script), early_stopping_patience=3, **corrected).fit(10)
    assert len(h_a) == 6 and len(h_c) == 10
    assert la.SCHEDULES['authors']['early_stopping_patience'] == la.SCHEDULES['corrected']['early_stopping_patience'] == 30


def test_the_authors_plateau_watches_the_validation_loss_while_accuracy_selects(tmp_path):
    "Schedule 'authors': ReduceLROnPlateau steps on val_loss (mode min), selection on val_accuracy; 'corrected' on val_accuracy."
    plateau = lambda opt, epochs, mode: torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode=mode, factor=0.1, patience=0)
    rising = [0.1 * k for k in range(1, 7)]                                    # accuracy improves every epoch
    la_ = _learner(tmp_path / 'a', _Scripted(rising), scheduler=plateau, **{k: v for k, v in la.SCHEDULES['authors'].items()})
    lc_ = _learner(tmp_path / 'c', _Scripted(rising), scheduler=plateau, **{k: v for k, v in la.SCHEDULES['corrected'].items()})
    ha, hc = la_.fit(6), lc_.fit(6)
    assert la_.scheduler.mode == 'min' and lc_.scheduler.mode == 'max'
    assert hc['lr'].nunique() == 1                                             # accuracy never plateaus: the rate stays
    assert la_.best_epoch == lc_.best_epoch == 6
    loss_bad = (ha['val_loss'].cummin().diff() >= 0).to_numpy()[1:-1]           # an epoch where the val loss did not improve ...
    if loss_bad.any(): assert ha['lr'].nunique() > 1                           # ... lowers the authors' rate


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
    assert len(cams) == int(parts['test']['Pneumothorax'].sum())
    assert cams[['coverage', 'share', 'mass_in_prior']].apply(lambda c: c.between(0, 1)).all().all()


@pytest.mark.slow
def test_smallest_phantom_run_gives_the_verdict_of_the_frozen_rule(tmp_path):
    """At its smallest setting (minutes; 120 phantoms at 32 px, 1 epoch) the phantom profile stores the primary claim with
    the verdict its numbers imply under the frozen rule, and the setup names the four choices. Whether the baseline learns
    there is not assumed: the default budget (320 phantoms, 8 epochs) is where it did on 2026-12-07 (see the module)."""
    import json
    from cxr_notebooks.eval.claims import VERDICTS
    from cxr_notebooks.reproduce.runner import repro_notebooks, run_reproduction
    run_reproduction('000', tmp_path, repro_notebooks()['000'].smallest, html=False, progress=False)
    rec = json.loads((tmp_path / 'metrics.json').read_text())
    for k in ('protocol=authors', 'attention_measure=coverage', 'cam_target=predicted', 'schedule=authors'): assert k in rec['setup']
    assert rec['data']['protocol'] == 'authors' and rec['data']['shared_patients'] == []
    assert {'coverage', 'share', 'in_prior'} <= set(rec['results']['attention'][0])
    claim, shortcut = rec['results']['claim'], rec['results']['shortcut']
    assert claim['verdict'] in VERDICTS and claim['baseline'] == 'λ = 1 (cross-entropy)' and 'differentiable' in claim['method']
    if shortcut['learnt']: assert claim['verdict'] in VERDICTS[:2] and claim['difference']['low'] is not None
    else: assert claim['verdict'] == VERDICTS[2]                                 # the baseline did not learn: nothing else is read


def test_marker_outside_the_lungs_at_the_designed_rates_and_independent_in_test(tmp_path):
    "The shortcut phantom's marker: white square outside every lung mask, exact counts per part and class, the same share of both test classes."
    parts = la.phantom_task_split(tmp_path / 'ph', 'effusion', 160, 48, seed=3)
    marked = la.with_marker(parts, la.task_classes('effusion'), tmp_path / 'marked', seed=3)
    x0, y0, x1, y1 = la.marker_square(48)
    assert (x0, y0, x1 - x0) == (2, 2, 5)
    for part, t in marked.items():
        pos = t['Effusion'].to_numpy() == 1
        for cls, rate in zip((True, False), la.MARKER_RATES[part]):
            assert t['marker'][pos == cls].sum() == round(rate * (pos == cls).sum()), (part, cls)
        for path, mask, on in zip(t['path'], t['mask_path'], t['marker']):
            img, lung = read_image(path), read_image(mask) > 127
            assert not lung[y0:y1, x0:x1].any() and bool((img[y0:y1, x0:x1] == 255).all()) == bool(on)
        assert t['mask_path'].tolist() == parts[part]['mask_path'].tolist()   # the phantom's own lung masks
    test = marked['test']; pos = test['Effusion'] == 1
    assert abs(test['marker'][pos].mean() - test['marker'][~pos].mean()) <= 1 / min(pos.sum(), (~pos).sum())   # independent up to rounding
    assert la.MARKER_RATES == {'train': (0.85, 0.10), 'val': (0.85, 0.10), 'test': (0.5, 0.5)}              # the pre-registered rates
    with pytest.raises(CXRDataError, match='outside the lungs'): la.stamp_marker(np.zeros((48, 48), np.uint8), np.ones((48, 48), np.uint8))
    with pytest.raises(ValueError, match='part'): la.with_marker({'holdout': parts['test']}, la.task_classes('effusion'), tmp_path / 'm2')


def test_run_settings_train_lambda_one_once_and_stop_on_bad_values():
    "λ = 1 is plain cross-entropy: trained once as `none`; every other λ once per variant; a bad value names its parameter."
    assert la.run_settings('1,0.5', 'both') == [('1', 'none'), ('0.5', 'published'), ('0.5', 'differentiable')]
    assert [l for l, _ in la.run_settings('all', 'published')] == ['1', '0.75', '0.5', '0.25', 'adaptive']
    for kw, word in ((dict(variant='all'), 'variant'), (dict(dataset='ottawa'), 'dataset'), (dict(dataset='byo'), 'data_root'),
                     (dict(protocol='random'), 'protocol'), (dict(schedule='fast'), 'schedule'), (dict(cam_target='max'), 'cam_target'),
                     (dict(attention_measure='mass'), 'measure')):
        with pytest.raises(ValueError, match=word): la.run_settings('1', **{'variant': 'both', **kw})


def _result(setting, lam, variant, auc, in_prior):
    "A `train_and_evaluate` result with CIs of +-0.05 (in-prior) and +-0.1 (AUC)."
    m = pd.DataFrame({'metric': ['auc', 'f1'], 'value': [auc, 0.5], 'low': [auc - 0.1, 0.4], 'high': [auc + 0.1, 0.6]})
    prior = {f'{c}{s}': in_prior + d for c in ('in_prior', *la.PRIOR_MEASURES) for s, d in (('', 0), ('_low', -0.05), ('_high', 0.05))}
    return dict(setting=setting, lam=lam, variant=variant, threshold=0.5, epochs_run=2, metrics=m, **prior)


def test_sweep_table_and_reading_state_what_the_numbers_say():
    "One row per setting with every metric and CI; the reading names learnt classifiers, CIs apart or overlapping, and the published caveat."
    sweep = la.sweep_table([_result('lambda1', '1', 'none', 0.55, 0.3), _result('lambda0.5_published', '0.5', 'published', 0.8, 0.5),
                            _result('lambda0.5_differentiable', '0.5', 'differentiable', 0.8, 0.32)])
    assert sweep.loc[1, ['auc', 'auc_low', 'f1_high', 'in_prior_high']].to_numpy(float) == pytest.approx([0.8, 0.7, 0.6, 0.55])
    text = la.reading(sweep, 'coverage', 'phantom, seed 0')
    assert 'Learnt the task' in text and 'lambda0.5_published 0.800' in text and 'lambda1 0.550' not in text   # 0.55's CI holds 0.5
    published, differentiable = [l for l in text.splitlines() if l.startswith('- lambda0.5_')]
    assert 'CIs apart' in published and 'no gradient' in published and 'CIs overlap' in differentiable
    assert 'No classifier learnt' in la.reading(sweep.assign(auc_low=0.45), 'coverage', 's')
    assert 'nothing to compare' in la.reading(sweep.iloc[1:], 'share', 's')
    fig = la.plot_in_prior(sweep, 'coverage', 'phantom, seed 0')
    assert len(fig.axes[0].containers) == 2   # one error-bar series per variant; λ = 1 is the dashed line


def test_the_papers_tables_i_ii_against_their_sweep_tables():
    "Cross-entropy is always Tables VII-IX's λ = 1 column; the check covers every model and task of the paper."
    from cxr_notebooks.reproduce.reference import load_reference
    ref = load_reference()
    checks = la.table_consistency(ref[ref.seed_file.str.startswith('000')])
    assert set(checks.model) == set(la.PAPER_MODELS.values()) and set(checks.column) == {'cross-entropy', 'proposed loss'}
    assert checks[checks.column == 'cross-entropy'].found_in.str.contains('lambda=1').all()
