"Seed 003's method module (cxr_notebooks.methods.spatial_attention), its reference numbers and its grid spec."
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
import yaml
from cxr_notebooks.core import CXRDataError, embedded_data_dir
from cxr_notebooks.data.labels import NIH_LABELS
from cxr_notebooks.methods import spatial_attention as sa
from cxr_notebooks.metrics.classification import bootstrap_ci
from cxr_notebooks.metrics.early_lift import micro_auroc
from cxr_notebooks.reproduce.reference import reference_table, reference_values

ROOT = Path(__file__).resolve().parents[1]
SEED_TEXT = ROOT.parent / 'shared' / 'seeds' / '003_932827f7cb25e7f1.txt'


def _preds(n=240, labels=('Effusion', 'Emphysema', 'Pneumothorax'), signal=(0.5, 1.5), seed=0):
    "Prediction tables of a plain and an `_sa` MobileNetV2 on the same images; the `_sa` scores carry more signal."
    rng = np.random.default_rng(seed)
    y = (rng.random((n, len(labels))) < 0.3).astype(float)
    base = pd.DataFrame({'image': [f'{i}.png' for i in range(n)], 'patient_id': np.arange(n) // 2})
    out = {}
    for name, s in zip(('mobilenetv2_100', 'mobilenetv2_100_sa'), signal):
        p = 1 / (1 + np.exp(-(s * (2 * y - 1) + rng.normal(size=y.shape))))
        out[name] = pd.concat([base, pd.DataFrame(y, columns=[f'y_{l}' for l in labels]),
                               pd.DataFrame(p, columns=[f'p_{l}' for l in labels])], axis=1)
    return out, list(labels)


def test_thirteen_labels_are_nih_without_hernia():
    assert sa.SEED003_LABELS == tuple(l for l in NIH_LABELS if l != 'Hernia') and len(sa.SEED003_LABELS) == 13
    assert {'Emphysema', 'Effusion', 'Pneumothorax'} <= set(sa.SEED003_LABELS)   # the classes the abstract names


def test_label_set_is_a_parameter():
    assert sa.parse_labels(None) == sa.SEED003_LABELS
    assert sa.parse_labels('Effusion, Pleural Thickening') == ('Effusion', 'Pleural_Thickening')
    assert sa.parse_labels(['Hernia']) == ('Hernia',)
    with pytest.raises(CXRDataError, match='unknown label'): sa.parse_labels('Effusion,Fracture')
    with pytest.raises(ValueError, match='twice'): sa.parse_labels('Effusion,Effusion')
    with pytest.raises(ValueError, match='expected NIH label'): sa.parse_labels(' , ')


def test_run_models_pairs_and_choices():
    assert sa.run_models('resnet101,mobilenetv2_100') == [('resnet101', 'resnet101', False), ('resnet101', 'resnet101_sa', True),
                                                        ('mobilenetv2_100', 'mobilenetv2_100', False),
                                                        ('mobilenetv2_100', 'mobilenetv2_100_sa', True)]
    assert sa.run_models(['efficientnet_b3'], 'without') == [('efficientnet_b3', 'efficientnet_b3', False)]
    with pytest.raises(ValueError, match='expected one or more of resnet101'): sa.run_models('densenet121')
    with pytest.raises(ValueError, match='expected one of both'): sa.run_models('resnet101', 'yes')
    for p in sa.PROFILES.values():
        assert sa.parse_backbones(p['backbone'])
    assert sa.parse_backbones(sa.PROFILES['full']['backbone']) == ('resnet101', 'efficientnet_b0', 'efficientnet_b3', 'mobilenetv2_100')


def test_reference_numbers_are_the_abstracts():
    "Every micro-AUC a run compares with is in data/reference with the abstract's value; EfficientNets have none."
    expected = {('resnet101', False): 0.853, ('resnet101', True): 0.872, ('mobilenetv2_100', False): 0.818, ('mobilenetv2_100', True): 0.826}
    for (b, a), v in expected.items():
        [c] = sa.paper_columns(b, a)
        s = reference_values('003', c.table, c.setting, c.metric, split=c.split)
        assert s['micro'] == v and s.attrs['source'].startswith(sa.PAPER['citation'].short + ', abstract')
    for b in ('efficientnet_b0', 'efficientnet_b3'):
        assert sa.paper_columns(b, True) == [] and 'minimal change' in sa.PAPER_SAYS[b]
    c = sa.CLASS_GAIN_COLUMN
    assert reference_values('003', c.table, c.setting, c.metric, split=c.split).to_dict() == {'Effusion': 0.04, 'Pneumothorax': 0.04, 'Emphysema': 0.05}
    ref = pd.read_csv(embedded_data_dir() / 'reference' / 'seed003_abstract.csv')
    assert (ref['table'] == 'abstract').all() and ref['note'].notna().all()
    assert reference_table('003', 'abstract', metric='micro_auc').shape == (1, 4)


@pytest.mark.skipif(not SEED_TEXT.is_file(), reason='the seed text is not in this checkout')
def test_every_reference_value_is_printed_in_the_seed_text():
    text = SEED_TEXT.read_text()
    ref = pd.read_csv(embedded_data_dir() / 'reference' / 'seed003_abstract.csv')
    for r in ref.itertuples():
        printed = f'+{r.value:.2f}' if r.metric == 'auc_gain' else f'{r.value:.3f}'
        assert printed in text, (r.setting, r.label, printed)
    assert 'minimal change' in text and '13 thoracic conditions' in text


def test_micro_auc_gain_and_paper_comparison():
    preds, labels = _preds()
    micro = sa.micro_auc_table(preds, labels, n_bootstrap=60)
    assert list(micro['model']) == ['mobilenetv2_100', 'mobilenetv2_100_sa'] and list(micro['attention']) == [False, True]
    y = preds['mobilenetv2_100'][[f'y_{l}' for l in labels]].to_numpy()
    assert micro['micro_auc'].iloc[1] == pytest.approx(micro_auroc(y, preds['mobilenetv2_100_sa'][[f'p_{l}' for l in labels]].to_numpy()))
    p0 = preds['mobilenetv2_100'][[f'p_{l}' for l in labels]].to_numpy()   # the CI: patient-level, the generic bootstrap's resamples
    slow = bootstrap_ci(y, p0, micro_auroc, 60, 0, groups=preds['mobilenetv2_100']['patient_id'].to_numpy())
    assert micro.iloc[0][['micro_auc', 'low', 'high']].tolist() == pytest.approx(list(slow[:3]), abs=1e-12)
    gains = sa.attention_gain_table(preds, labels, n_bootstrap=60)
    g = gains.iloc[0]
    assert g['gain'] == pytest.approx(micro['micro_auc'].iloc[1] - micro['micro_auc'].iloc[0]) and g['low'] <= g['gain'] <= g['high']
    assert g['low'] > 0   # the paired CI sees the stronger signal
    p1, k = preds['mobilenetv2_100_sa'][[f'p_{l}' for l in labels]].to_numpy(), len(labels)   # the generic paired bootstrap's CI
    paired = bootstrap_ci(np.hstack([y, y]), np.hstack([p0, p1]), lambda yt, ys: micro_auroc(yt[:, :k], ys[:, k:]) - micro_auroc(yt[:, :k], ys[:, :k]),
                          60, 0, groups=preds['mobilenetv2_100']['patient_id'].to_numpy())
    assert [g['gain'], g['low'], g['high']] == pytest.approx(list(paired[:3]), abs=1e-12)
    cmp = sa.paper_comparison(micro, gains, {'MobileNetV2': 0.818, 'Attention MobileNetV2': 0.826}, 'seed 003, abstract', 'setup X')
    assert list(cmp['row']) == ['without attention', 'with attention', 'gain']
    assert cmp['paper'].tolist() == pytest.approx([0.818, 0.826, 0.008])
    assert cmp['difference'].tolist() == pytest.approx((cmp['ours'] - cmp['paper']).tolist())
    assert cmp.attrs['paper_source'] == 'seed 003, abstract' and 'setup X' in cmp.attrs['caption']


def test_efficientnet_rows_have_no_paper_number_but_say_why():
    preds, labels = _preds()
    preds = {k.replace('mobilenetv2_100', 'efficientnet_b0'): v for k, v in preds.items()}
    micro, gains = sa.micro_auc_table(preds, labels, 20), sa.attention_gain_table(preds, labels, 20)
    cmp = sa.paper_comparison(micro, gains, {}, 'seed 003, abstract', 's')
    assert cmp['paper'].isna().all() and cmp['difference'].isna().all() and (cmp['paper_says'] == "'minimal change' (no number)").all()


def test_gain_needs_the_same_test_images():
    preds, labels = _preds()
    preds['mobilenetv2_100_sa'] = preds['mobilenetv2_100_sa'].iloc[::-1].reset_index(drop=True)
    with pytest.raises(CXRDataError, match='different images'): sa.attention_gain_table(preds, labels, 5)


def test_single_model_run_has_no_gain_row():
    preds, labels = _preds()
    one = {'mobilenetv2_100_sa': preds['mobilenetv2_100_sa']}
    assert sa.attention_gain_table(one, labels, 5).empty
    micro = sa.micro_auc_table(one, labels, 5)
    assert list(sa.paper_comparison(micro, sa.attention_gain_table(one, labels, 5), {'Attention MobileNetV2': 0.826}, 's', 't')['row']) == ['with attention']


def test_class_gain_comparison_and_ablation_grid():
    preds, labels = _preds()
    dl = pd.DataFrame({'label': labels, 'auc_baseline': [.7, .6, .8], 'auc_ours': [.74, .7, .8], 'difference': [.04, .1, 0.],
                       'z': [1., 2., 0.], 'p_value': [.3, .04, 1.]})
    cg = sa.class_gain_comparison({'mobilenetv2_100': dl}, {'Emphysema': 0.05, 'Effusion': 0.04}, 'seed 003, abstract', 's')
    assert cg.set_index('label')['ours'].to_dict() == pytest.approx({'Emphysema': 0.1, 'Effusion': 0.04})
    assert cg.set_index('label')['difference'].to_dict() == pytest.approx({'Emphysema': 0.05, 'Effusion': 0.0})
    assert 'backbone not stated' in cg.attrs['paper_source']
    micro = sa.micro_auc_table(preds, labels, 5)
    aucs = {m: pd.DataFrame({'label': labels, 'auc': v}) for m, v in zip(preds, ([.7, .6, .8], [.74, .7, .8]))}
    g = sa.ablation_grid(aucs, micro)
    assert list(g.index) == labels + ['micro']
    assert g.loc['Emphysema', ('mobilenetv2_100', 'gain')] == pytest.approx(0.1)
    assert g.loc['micro', ('mobilenetv2_100', 'with')] == micro['micro_auc'].iloc[1]


def test_early_lift_tables_and_plot():
    preds, labels = _preds()
    lift = sa.early_lift_tables(preds, labels, n_bootstrap=10)
    assert list(lift.columns) == ['model', 'label', 'metric', 'value', 'low', 'high', 'n_skipped', 'note']
    assert set(lift['model']) == set(preds) and len(lift) == 2 * (3 * 3 + 4)
    fig = sa.plot_early_lift(preds, labels, classes=['Effusion', 'Hernia'])   # a class not among the labels is skipped
    assert len(fig.axes) == 3 and fig.axes[1].get_xlim() == (0, 0.2)


def test_grid_spec_runs_backbone_x_attention_at_smoke_size():
    from cxr_notebooks.reproduce.grid import read_grid_spec
    from cxr_notebooks.reproduce.runner import check_parameters, repro_notebooks
    spec = read_grid_spec(ROOT / 'grids' / '003_backbone_x_attention.yaml')
    assert spec.notebook == '003' and list(spec.axes) == ['backbone', 'attention']
    runs = spec.varying
    assert {(r['backbone'], r['attention']) for r in runs} == {(b, a) for b in spec.axes['backbone'] for a in ('without', 'with')}
    nb = repro_notebooks()['003']
    for r in runs: check_parameters(nb, {**spec.parameters, **r})
    assert spec.parameters['profile'] == 'smoke' and spec.parameters['image_size'] <= 64


def test_one_weights_file_fits_one_backbone():
    "A plain ImageNet checkpoint would be loaded into every backbone of a multi-backbone run: refused up front."
    assert len(sa.run_models('resnet101', 'both', weights='resnet101.pth')) == 2
    with pytest.raises(ValueError, match='one backbone per weights file'): sa.run_models('resnet101,mobilenetv2_100', 'both', 'x.pth')
