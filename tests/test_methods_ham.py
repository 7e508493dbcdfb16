"""HAM method (seed 001, methods.ham): Table VI switches, the training step, training, localization scoring, paper columns."""
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from cxr_notebooks.methods.ham import (ABLATIONS, PROFILES, T_IOR, T_IOU, ablation, accuracy_row, build_ham, ham_loss, ham_step,
                                       localization_accuracy, localization_table, paper_columns, predict_ham, train_ham)
from cxr_notebooks.reproduce.reference import reference_values


def test_every_table6_row_builds_and_has_its_switches():
    for name, (model_kw, loss_kw) in ABLATIONS.items():
        m = build_ham(name, 2, backbone='resnet18', encoder_channels=8)
        assert (m.fab is None) == (model_kw.get('fab') == 'none') and (m.pn_head is not None) == model_kw['positive_attention']
        loss = ham_loss(name)
        assert (loss.bound, loss.union) == (loss_kw['bound'], loss_kw['union'])
        assert reference_values('001', 'Table VI', name, 'loc_iou_0.1', 'official_test')['Average'] > 0
    assert ablation('ham') == ABLATIONS['RN50-8-LSE+FAB+PA+ABU']
    with pytest.raises(ValueError, match='ablation'): ablation('RN50')
    assert set(PROFILES) == {'phantom', 'smoke', 'full'} and PROFILES['full']['image_size'] == 512


def test_ham_step_uses_boxes_only_when_present():
    net = build_ham('HAM', 2, backbone='resnet18', encoder_channels=16)
    no_box = [torch.zeros(0, 4)] * 2, [torch.zeros(0, dtype=torch.long)] * 2
    batch = {'image': torch.randn(2, 3, 32, 32), 'label': torch.tensor([[1., 0.], [0., 1.]]), 'label_mask': torch.ones(2, 2),
             'boxes': [torch.tensor([[4., 4., 20., 20.]]), torch.zeros(0, 4)], 'box_labels': [torch.tensor([0]), torch.zeros(0, dtype=torch.long)]}
    loss, out = ham_step(net, batch, ham_loss('HAM'))
    assert 'amse' in out['loss_terms'] and torch.isfinite(loss)
    _, out2 = ham_step(net, {**batch, 'boxes': no_box[0], 'box_labels': no_box[1]}, ham_loss('HAM'))
    assert 'amse' not in out2['loss_terms']
    none, out3 = ham_step(net, batch, None)
    assert none is None and set(out3) == {'logits'}


class BoxModel(nn.Module):
    "A stand-in HAM whose abnormality attention is its input's first channel > 0."
    def __init__(self): super().__init__(); self.w = nn.Parameter(torch.zeros(1))
    def forward(self, x): return {'logits': torch.zeros(len(x), 2), 'cam': (x[:, :2] > 0).float(), 'pos_cam': None, 'foreground': None}


@pytest.fixture
def boxed_image(tmp_path):
    import cv2
    img = np.zeros((64, 64), np.uint8); img[10:30, 20:50] = 255; img[40:60, 5:15] = 255
    cv2.imwrite(str(tmp_path / 'a.png'), img)
    table = pd.DataFrame({'image': ['a.png'], 'path': [str(tmp_path / 'a.png')], 'patient_id': ['p1'], 'Mass': [1.], 'Nodule': [1.]})
    boxes = pd.DataFrame({'image': ['a.png', 'a.png'], 'label': ['Mass', 'Nodule'], 'x_min': [20., 30.], 'y_min': [10., 0.],
                          'x_max': [50., 40.], 'y_max': [30., 5.]})
    return table, boxes


def test_localization_box_and_mask_modes(boxed_image):
    table, boxes = boxed_image
    b = localization_table(BoxModel(), table, boxes, ['Mass', 'Nodule'], 64, region='box').set_index('label')
    m = localization_table(BoxModel(), table, boxes, ['Mass', 'Nodule'], 64, region='mask').set_index('label')
    # the map has two regions (600 + 200 pixels); box mode: each region's box, the best counts (the Mass box exactly)
    assert b.loc['Mass', 'iou'] == pytest.approx(1, abs=0.02) and b.loc['Mass', 'ior'] == pytest.approx(1, abs=0.02)
    # mask mode (authors' code): all 800 thresholded pixels against the 600-pixel box
    assert m.loc['Mass', 'iou'] == pytest.approx(0.75, abs=0.02) and m.loc['Mass', 'ior'] == pytest.approx(0.75, abs=0.02)
    for t in (b, m): assert t.loc['Nodule', 'iou'] == 0 and t.loc['Nodule', 'ior'] == 0      # the Nodule box misses both regions
    with pytest.raises(ValueError, match='region'): localization_table(BoxModel(), table, boxes, ['Mass'], 64, region='pixels')


def test_localization_accuracy_strict_and_rows():
    s = pd.DataFrame({'image': ['a', 'b'], 'label': ['Mass', 'Mass'], 'iou': [0.1, 0.5], 'ior': [0.9, 0.2]})
    acc = localization_accuracy(s, ['Mass'])
    assert len(acc) == len(T_IOU) + len(T_IOR)
    row = acc[(acc.criterion == 'iou') & (acc.threshold == 0.1)].iloc[0]
    assert row['Mass'] == 0.5                                                   # IoU > 0.1: the paper's strict '>'
    loose = localization_accuracy(s, ['Mass'], [0.1], [], strict=False)
    assert loose['Mass'][0] == 1.0                                              # the authors' '>='
    assert accuracy_row(acc, 'loc_ior_0.9').set_index('label').loc['Mass', 'auc'] == 0.0


def test_paper_columns_match_only_the_configuration():
    assert [(c.table, c.metric) for c in paper_columns('full', 'official', 'HAM', False)] == \
        [('Table VI', 'auc'), ('Table VI', 'loc_iou_0.1'), ('Table I', 'auc')]
    assert [c.table for c in paper_columns('full', 'official', 'RN50-8-LSE', False)] == ['Table VI', 'Table VI']
    assert paper_columns('phantom', 'official', 'HAM', False) == []
    assert paper_columns('full', 'official', 'HAM', True) == []                  # Table VI trains without boxes
    assert {c.metric for c in paper_columns('full', 'without_bboxes', 'HAM', False)} == {'loc_iou_0.1', 'loc_iou_0.3'}
    cols = paper_columns('full', 'patient_localization', 'HAM', True)
    assert len(cols) == 14 and all('patient-level' in c.note for c in cols) and all(c.setting == 'Ours' for c in cols)  # never '+ SR'


@pytest.mark.slow
def test_train_ham_with_boxes_records_terms_and_resumes(tmp_path):
    from cxr_notebooks.data.synth import write_phantom_folder
    table, boxes = write_phantom_folder(tmp_path / 'ph', 48, 48, ('Cardiomegaly', 'Effusion'), seed=0)
    parts = {'train': table.iloc[:32], 'val': table.iloc[32:40], 'test': table.iloc[40:]}
    kw = dict(image_size=48, batch_size=16, epochs=1, lr=1e-3, progress=False, backbone='resnet18', encoder_channels=16, num_workers=0)
    res = train_ham(parts, ['Cardiomegaly', 'Effusion'], tmp_path / 'run', 'HAM', boxes, helper=list(parts['train'].image[:8]), **kw)
    assert {'train_ab', 'train_amse', 'train_bound', 'train_union', 'val_auroc'} <= set(res.history.columns)
    pred = predict_ham(res.model, parts['test'], ['Cardiomegaly', 'Effusion'], 48)
    assert pred.filter(like='p_').to_numpy().min() >= 0 and len(pred) == 8
    again = train_ham(parts, ['Cardiomegaly', 'Effusion'], tmp_path / 'run', 'HAM', boxes, helper=list(parts['train'].image[:8]), **kw)
    assert len(again.history) == 1                                               # resumed: nothing retrained


def test_paper_columns_for_table2_and_chexpert_tables():
    "Table II for the classification folds; Table VIII, IX-X (Ours / Ours_extra / RN50 / DRN50) for CheXpert; every column has paper numbers."
    cols = {(n, b, s, d): paper_columns('full', s, n, b, d) for n in ('HAM', 'RN50-32-GAP', 'RN50-8-LSE') for b in (False, True)
            for s, d in (('patient_classification', 'nih'), ('cv_classification', 'nih'), ('official', 'chexpert'), ('chexpert_localization', 'chexpert'))}
    assert [(c.table, c.setting) for c in cols[('HAM', True, 'cv_classification', 'nih')]] == [('Table II', 'Ours')]
    assert 'patient-level' in cols[('HAM', True, 'patient_classification', 'nih')][0].note
    assert [c.setting for c in cols[('HAM', False, 'official', 'chexpert')]] == ['Ours-RN50'] and cols[('RN50-8-LSE', False, 'official', 'chexpert')] == []
    loc = {k[:2]: {c.setting for c in v} for k, v in cols.items() if k[2] == 'chexpert_localization'}
    assert loc == {('HAM', False): {'Ours'}, ('HAM', True): {'Ours_extra'}, ('RN50-32-GAP', False): {'RN50'}, ('RN50-8-LSE', False): {'DRN50'},
                   ('RN50-32-GAP', True): set(), ('RN50-8-LSE', True): set()}
    assert sorted(c.metric for c in cols[('HAM', True, 'chexpert_localization', 'chexpert')]) == [
        'loc_ior_0.1', 'loc_ior_0.5', 'loc_ior_0.75', 'loc_iou_0.1', 'loc_iou_0.3', 'loc_iou_0.5']
    for c in (c for v in cols.values() for c in v):
        assert reference_values('001', c.table, c.setting, c.metric, c.split).notna().all()
    with pytest.raises(ValueError, match='dataset'): paper_columns('full', 'official', 'HAM', False, 'mimic')


def test_data_settings_the_paper_lacks_stop_before_any_data():
    from cxr_notebooks.methods.ham import check_data_settings
    for args, word in ((('phantom', 'chexpert', 'official', 1), 'profile smoke'), (('smoke', 'nih', 'chexpert_localization', 1), 'split='),
                       (('smoke', 'mimic', 'official', 1), 'dataset'), (('smoke', 'nih', 'official', 0), 'fold=0'),
                       (('smoke', 'nih', 'official', 1, True), 'extra_boxes')):
        with pytest.raises(ValueError, match=word): check_data_settings(*args)
    check_data_settings('smoke', 'nih', 'cv_classification', 0); check_data_settings('phantom', 'nih', 'anything', 1)


def test_ham_folds_of_the_embedded_nih_sample():
    "without_bboxes tests on exactly the boxed images and trains on none of their patients; patient folds give helpers = boxed training images."
    from cxr_notebooks.data.splits import check_patient_disjoint, patient_keys
    from cxr_notebooks.methods.ham import ham_folds, nih_data
    from cxr_notebooks.reproduce.kit import load_nih_data, make_split
    nih = load_nih_data('smoke'); data = nih_data(nih, make_split(nih, 'official'))
    wb = ham_folds(data, 'without_bboxes', seed=0)
    parts, helper = wb.folds['']
    assert set(parts['test']['image']) == set(data.boxed) and helper == [] and 'dropped' in wb.note
    assert not set(patient_keys(parts['train'])) & set(patient_keys(parts['test']))
    assert ham_folds(data, 'official').folds[''][0] is data.parts
    pl = ham_folds(data, 'patient_localization', fold=0, seed=0)
    assert list(pl.folds) == [f'fold{f}' for f in range(1, 6)] and pl.leaks == {}
    for p, h in pl.folds.values():
        check_patient_disjoint(p); assert set(h) <= set(p['train']['image']) & set(data.boxed) and set(p['test']['image']) <= set(data.boxed)


def test_attention_examples_scale_the_boxes_and_normalise_as_in_training(tmp_path):
    "The boxes go from stored pixels to input pixels, the model sees mean = std = 0.5 inputs, and each map is in [0, 1]."
    import cv2
    from cxr_notebooks.methods.ham import attention_examples
    seen = []
    class BoxModel(nn.Module):
        def __init__(self): super().__init__(); self.w = nn.Parameter(torch.zeros(1))
        def forward(self, x):
            seen.append(x.clone())
            return {'logits': torch.zeros(len(x), 2), 'cam': (x[:, :2] > 0).float(), 'pos_cam': None, 'foreground': torch.ones_like(x[:, :1])}
    img = np.zeros((80, 80), np.uint8); img[20:40, 8:48] = 255
    cv2.imwrite(str(tmp_path / 'a.png'), img)
    tab = pd.DataFrame({'image': ['a.png', 'b.png'], 'path': [str(tmp_path / 'a.png')] * 2, 'patient_id': ['p1', 'p2'], 'Mass': [1.0, 0], 'Nodule': [0, 0.]})
    bx = pd.DataFrame({'image': ['a.png'], 'label': ['Nodule'], 'x_min': [8.], 'y_min': [20.], 'x_max': [48.], 'y_max': [40.]})
    ims, maps, titles, bxs = attention_examples(BoxModel(), tab, bx, ['Mass', 'Nodule'], 40)
    assert titles == ['Nodule: foreground', 'Nodule: abnormality'] and len(ims) == 2   # no positive level; b.png has no box
    np.testing.assert_allclose(bxs[1], [[4., 10., 24., 20.]])
    assert seen[0].min() == pytest.approx(-1) and seen[0].max() == pytest.approx(1)    # (x - 0.5) / 0.5 of [0, 1] pixels
    assert ims[0].min() >= 0 and ims[0].max() <= 1 and maps[1][10:20, 4:24].mean() > 0.9


def test_table6_grid_spec_has_one_run_per_ablation_row():
    "grids/001_table6_ablation.yaml: one run per row of Table VI (`ABLATIONS`) and Table VII's Ours-MSE, every run's parameters valid."
    from pathlib import Path
    from cxr_notebooks.reproduce.grid import read_grid_spec
    from cxr_notebooks.reproduce.runner import check_parameters, repro_notebooks
    spec = read_grid_spec(Path(__file__).resolve().parents[1] / 'grids' / '001_table6_ablation.yaml')
    assert spec.notebook == '001' and [r['ablation'] for r in spec.varying[:-1]] == list(ABLATIONS)
    assert spec.varying[-1] == {'ablation': 'RN50-8-LSE+FAB+PA+ABU', 'box_loss': 'mse'}
    nb = repro_notebooks()['001']
    for r in spec.varying: check_parameters(nb, {**spec.parameters, **r})


def test_table_vii_ours_mse_is_a_run_setting():
    "Table VII: the full method with the plain MSE box loss ('Ours-MSE') in the 5-fold localization setting, compared with its row."
    assert ham_loss('HAM', box_loss='mse').box_loss == 'mse' and ham_loss('HAM').box_loss == 'amse'
    cols = paper_columns('full', 'cv_localization', 'HAM', True, box_loss='mse')
    assert [(c.table, c.setting, c.metric) for c in cols] == [('Table VII', 'Ours-MSE', 'loc_iou_0.1'), ('Table VII', 'Ours-MSE', 'loc_iou_0.3')]
    amse = paper_columns('full', 'cv_localization', 'HAM', True)
    assert ('Table VII', 'Ours', 'loc_iou_0.3') in [(c.table, c.setting, c.metric) for c in amse]
    assert paper_columns('full', 'official', 'HAM', False, box_loss='mse') == []         # no boxes in training: no box loss to compare
    assert paper_columns('full', 'cv_localization', 'RN50-8-LSE', True, box_loss='mse') == []
