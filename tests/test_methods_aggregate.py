"Seed 002's configuration: which paper column a run is compared with, and its losses from training counts."
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
