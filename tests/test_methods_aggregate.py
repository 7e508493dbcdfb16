"Seed 002's configuration: which paper column a run is compared with, and its losses from training counts."
import pytest
import torch
from cxr_notebooks.data.labels import NIH_LABELS
from cxr_notebooks.methods.aggregate import aggregate_loss, default_image_size, loss_weights_table, paper_columns


def test_table4_column_needs_the_optimizer_too():
    "Defect: a wfocal + Adam run was compared with the (Ranger) weighted-focal column without a word."
    assert paper_columns('official', 'wfocal', 'densenet121', 2, 'adam') == []
    assert paper_columns('official', 'wfocal', 'densenet121', 2, 'ranger')[0].setting == \
        'weighted focal loss beta=0.9998 DenseNet-121 two-stage'
    assert paper_columns('official', 'bce', 'densenet121', 1, 'Adam')[0].setting == 'baseline reproduce ChexNet [15]'
    assert paper_columns('official', 'bce', 'efficientnet_b0', 1, 'adam') == []   # no neighbouring column either


def test_chexnet_tables_report_each_stage():
    cols = paper_columns('chexnet', 'wfocal', 'densenet121', 2, 'ranger')
    assert [(c.table, c.stage) for c in cols] == [('Table 8', 1), ('Table 8', 2)]
    assert paper_columns('chexnet', 'focal', 'densenet121', 1, 'ranger')[0].table == 'Table 5'


def test_profiles_and_losses(sample_table):
    assert default_image_size('efficientnet_b3', 'full') == 300 and default_image_size('densenet121', 'full') == 224
    w = loss_weights_table(sample_table, NIH_LABELS)
    assert (w['proposed_w_neg'] > 0).all()   # cb_scale 0.1 (the authors' code) keeps w- = 1 - w+ positive
    loss = aggregate_loss('wfocal', sample_table, NIH_LABELS)
    assert torch.isfinite(loss(torch.randn(3, 14), (torch.rand(3, 14) > 0.7).float()))


# --- the phantom class-balance experiment (pre-registered in nbs/methods/80_aggregate.ipynb) ---

def test_long_tailed_training_part_has_the_designed_prevalences():
    from cxr_notebooks.methods.aggregate import PHANTOM_PREVALENCE, long_tailed_labels, rare_classes
    y = long_tailed_labels(1200, seed=3)
    assert y.sum(0).astype(int).tolist() == [max(1, round(p * 1200)) for p in PHANTOM_PREVALENCE.values()]
    assert y.sum(0)[-1] / 1200 < 0.01 and y.sum(0)[0] / 1200 == 0.30   # from 30 % to well under 1 %
    assert rare_classes() == [c for c, p in PHANTOM_PREVALENCE.items() if p < 0.05] and len(rare_classes()) == 5


def test_enriched_test_part_measures_every_class(tmp_path):
    import cv2, numpy as np
    from cxr_notebooks.data.synth import make_phantom
    from cxr_notebooks.metrics.classification import too_few_to_measure
    from cxr_notebooks.methods.aggregate import PHANTOM_CLASSES, long_tailed_phantoms
    ph = long_tailed_phantoms(tmp_path, 100, 32, seed=1)
    y = ph['test'][list(PHANTOM_CLASSES)].to_numpy()
    assert all(too_few_to_measure(y[:, k]) is None for k in range(y.shape[1]))   # >= 20 positives and negatives each
    assert len(ph['train']) == 100 and ph['train']['Pneumothorax'].sum() == 1
    r = ph['val'].iloc[5]   # the PNGs are the phantoms of their labels, with exact lung masks
    p = make_phantom(32, [c for c in PHANTOM_CLASSES if r[c]], int(np.random.default_rng([1, 3, 1, 5]).integers(2 ** 62)))
    assert (cv2.imread(r.path, cv2.IMREAD_UNCHANGED) == p.image).all()
    assert (cv2.imread(r.mask_path, cv2.IMREAD_UNCHANGED) == p.lung_mask * 255).all()
    assert len({*ph['train'].patient_id, *ph['val'].patient_id, *ph['test'].patient_id}) == 100 + 120 + 300


#: the phantom experiment at its smallest setting (the default's test part and analysis; 100 training phantoms, 1 epoch, 20 resamples)
PHANTOM_SMALLEST = {'profile': 'phantom', 'max_images': 100, 'epochs': 1, 'n_bootstrap': 20, 'num_workers': 0}


@pytest.mark.slow
def test_phantom_experiment_gives_the_verdict_of_the_frozen_rule(tmp_path):
    """`-p profile phantom` end to end: the record holds the claim and the verdict its numbers imply. Measured 2026-12-07: the
    BCE baseline did not learn the rare classes at this setting (0.477 [0.426, 0.492]) nor at the default (0.531 [0.491, 0.572]),
    so the experiment says it cannot measure; a larger budget must be registered before it can (nbs/methods/80_aggregate.ipynb)."""
    import json
    from cxr_notebooks.eval.claims import VERDICTS
    from cxr_notebooks.reproduce.kit import check_record
    from cxr_notebooks.reproduce.runner import run_reproduction
    run_reproduction('002', tmp_path, PHANTOM_SMALLEST, html=False, progress=False)
    rec = json.loads((tmp_path / 'metrics.json').read_text())
    check_record(rec)
    claim = rec['results']['claim']
    assert claim['verdict'] in VERDICTS and claim['reason']
    assert rec['headline']['metric'].startswith('rare-class mean AUROC') and len(rec['results']['per_class']) == 8
    assert (tmp_path / 'phantom_auc_by_prevalence.csv').is_file()
    b = claim['baseline_ci']
    if b['low'] is None or b['low'] <= 0.5:                  # the baseline did not learn: nothing else is read
        assert claim['verdict'] == VERDICTS[2] and claim['baseline'] in claim['reason']
    else: assert claim['verdict'] in VERDICTS[:2] and claim['difference']['low'] is not None
