"Contract and edge cases of cxr_notebooks.losses.classification (seed 002 weights and weighted BCE / focal losses)."
import warnings
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import torchvision
from cxr_notebooks.core import CXRDataError
from cxr_notebooks.data.labels import NIH_LABELS
from cxr_notebooks.losses.classification import (SEED002_BETA, SEED002_BETAS, LOSSES, WeightedBCELoss, WeightedFocalLoss,
                                  class_balanced_weights, create_loss, effective_number_alpha, label_counts, wang_weights,
                                  inverse_frequency_pos_weight)

# seed 002 Table 3 (whole-dataset counts, NIH_LABELS order)
TABLE3 = [11559, 2776, 13317, 19894, 5782, 6331, 1431, 5302, 4667, 2303, 2516, 1686, 3385, 227]
N_ALL = 112120


@pytest.fixture
def xy():
    g = torch.Generator().manual_seed(0)
    return torch.randn(5, 14, generator=g) * 3, (torch.rand(5, 14, generator=g) > 0.7).float()


def test_pinned_constants():
    assert SEED002_BETAS == pytest.approx((0.999998, 0.99998, 0.9998, 0.9993, 0.998), abs=1e-15)
    assert SEED002_BETA == 0.9998 and LOSSES.names() == ['bce', 'wbce', 'cb-bce', 'focal', 'wfocal', 'pos-bce']


def test_wang_weights_eq1():
    w = wang_weights(TABLE3, N_ALL)
    assert list(w.index) == list(NIH_LABELS)
    assert w.loc['Hernia', 'w_pos'] == pytest.approx(N_ALL / 227)
    assert w.loc['Hernia', 'w_neg'] == pytest.approx(N_ALL / (N_ALL - 227))


def test_effective_number_sums_to_C_and_orders_by_rarity():
    a = effective_number_alpha(TABLE3, SEED002_BETA)
    assert a.sum() == pytest.approx(14)
    assert a.idxmax() == 'Hernia' and a.idxmin() == 'Infiltration'


@pytest.mark.parametrize('beta', SEED002_BETAS)
def test_proposed_weights_on_table3_finite_and_w_pos_positive(beta):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        w = class_balanced_weights(TABLE3, beta=beta)
    assert np.isfinite(w.to_numpy()).all() and (w.w_pos > 0).all()
    assert np.allclose(w.w_pos + w.w_neg, 1)
    assert w.loc['Hernia', 'w_neg'] < 0            # the sign finding: Eq. 6 is negative for the rarest class


def test_negative_w_neg_warns_and_clip_option():
    with pytest.warns(UserWarning, match="Hernia"):
        w = class_balanced_weights(TABLE3, beta=SEED002_BETA)
    assert sorted(w.index[w.w_neg <= 0]) == ['Fibrosis', 'Hernia', 'Pneumonia']
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        c = class_balanced_weights(TABLE3, beta=SEED002_BETA, clip_negative=True)
    assert (c.w_neg >= 0).all() and c.loc['Hernia', 'w_neg'] == 0 and (c.w_pos == w.w_pos).all()


def test_authors_scaled_weights_reproduced():
    # github.com/bayu-ladom-ipok/weOpen custom_identical_split/weightsCalculation/calculateWeights.ipynb
    chexnet_train = [7996, 1950, 9261, 13914, 3988, 4375, 978, 3705, 3263, 1690, 1799, 1158, 2279, 144]
    w = class_balanced_weights(chexnet_train, beta=0.999823008849558, scale=0.1)
    assert w.loc['Hernia', 'w_pos'] == pytest.approx(0.720226409263611, abs=1e-12)
    assert w.loc['Pneumonia', 'w_neg'] == pytest.approx(0.8859702012473223, abs=1e-12)


def test_schemes_cui_wang_none():
    cui = class_balanced_weights(TABLE3, scheme='cui')
    assert (cui.w_pos == cui.w_neg).all()
    assert class_balanced_weights(TABLE3, N_ALL, scheme='wang').equals(wang_weights(TABLE3, N_ALL))
    assert (class_balanced_weights(TABLE3, scheme='none').to_numpy() == 1).all()
    with pytest.raises(CXRDataError, match='needs n'):
        class_balanced_weights(TABLE3, scheme='wang')
    with pytest.raises(CXRDataError, match="'focal'"):
        class_balanced_weights(TABLE3, scheme='focal')


def test_empty_class_names_the_class():
    counts = dict(zip(NIH_LABELS, TABLE3)); counts['Hernia'] = 0
    for f in (lambda: wang_weights(counts, N_ALL), lambda: class_balanced_weights(counts),
              lambda: create_loss('wfocal', counts)):
        with pytest.raises(CXRDataError, match="class 'Hernia' has 0 positive samples in the training split"):
            f()


def test_bad_counts_and_beta():
    with pytest.raises(CXRDataError, match="'Mass'"):
        wang_weights({'Mass': -1, 'Edema': 3}, 10)
    with pytest.raises(CXRDataError, match='no negatives'):
        wang_weights({'Mass': 10}, 10)
    with pytest.raises(CXRDataError, match='1-D'):
        wang_weights([[1, 2]], 10)
    with pytest.raises(CXRDataError, match='beta=1'):
        effective_number_alpha(TABLE3, 1.0)


def test_label_counts_ignores_nan_and_names_missing_column():
    t = pd.DataFrame({'Mass': [1, 0, np.nan], 'Edema': [1, 1, 0]})
    c = label_counts(t, ['Mass', 'Edema'])
    assert c.pos.tolist() == [1, 2] and c.n.tolist() == [2, 3]
    with pytest.raises(CXRDataError, match="'Hernia'"):
        label_counts(t, ['Mass', 'Hernia'])


def test_unit_weights_gamma0_is_bce(xy):
    x, y = xy
    ref = F.binary_cross_entropy_with_logits(x, y)
    assert torch.allclose(WeightedBCELoss()(x, y), ref, atol=1e-6)
    assert torch.allclose(WeightedFocalLoss(alpha=None, gamma=0)(x, y), ref, atol=1e-6)
    assert torch.allclose(WeightedFocalLoss(alpha=0.5, gamma=0)(x, y), 0.5 * ref, atol=1e-6)


@pytest.mark.parametrize('alpha,gamma', [(0.25, 2.0), (0.5, 1.0), (0.75, 0.5)])
def test_focal_matches_torchvision(xy, alpha, gamma):
    x, y = xy
    ref = torchvision.ops.sigmoid_focal_loss(x, y, alpha=alpha, gamma=gamma, reduction='mean')
    assert torch.allclose(WeightedFocalLoss(alpha=alpha, gamma=gamma)(x, y), ref, atol=1e-6)


def test_weights_apply_per_class(xy):
    x, y = xy
    wp, wn = torch.linspace(0.5, 3, 14), torch.linspace(2, -1, 14)
    manual = -(wp * y * F.logsigmoid(x) + wn * (1 - y) * F.logsigmoid(-x)).mean()
    assert torch.allclose(WeightedBCELoss(wp, wn)(x, y), manual, atol=1e-6)


def test_mask_excludes_elements_exactly(xy):
    x, y = xy
    m = torch.ones_like(y); m[1] = 0; m[:, 3] = 0
    y_nan = y.clone(); y_nan[m == 0] = float('nan')
    keep = m.bool()
    for fn in (WeightedBCELoss(2.0, 0.5), WeightedFocalLoss(2.0, 0.5, 0.25, 2.0)):
        assert torch.allclose(fn(x, y_nan, m), fn.elementwise(x[keep], y[keep]).mean(), atol=1e-6)
        x2 = x.clone(); x2[m == 0] = 1e4        # masked elements cannot change the loss
        assert torch.equal(fn(x2, y, m), fn(x, y, m))
    assert WeightedBCELoss()(x, y, torch.zeros_like(y)) == 0


@pytest.mark.parametrize('name', LOSSES.names())
def test_gradient_finite_for_extreme_logits(name):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        fn = create_loss(name, TABLE3, N_ALL, gamma=0.5 if 'focal' in name else 1.0)
    x = torch.tensor([[50.] * 14, [-50.] * 14, [1e4] * 14]).requires_grad_()
    y = torch.tensor([[0.] * 14, [1.] * 14, [1.] * 14])
    loss = fn(x, y); loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


def test_create_loss_names_and_types():
    assert isinstance(create_loss('bce'), WeightedBCELoss) and isinstance(create_loss('focal'), WeightedFocalLoss)
    wb = create_loss('wbce', TABLE3, N_ALL)
    assert wb.w_pos[-1].item() == pytest.approx(N_ALL / 227, rel=1e-6)
    cb = create_loss('cb-bce', TABLE3)
    assert torch.equal(cb.w_pos, cb.w_neg)
    wf = create_loss('wfocal', TABLE3, beta=0.998, clip_negative=True, alpha=0.25, gamma=2.0)
    assert wf.alpha == 0.25 and wf.gamma == 2.0 and (wf.w_neg >= 0).all()
    assert isinstance(create_loss('BCE'), WeightedBCELoss) and isinstance(create_loss('CB_BCE', TABLE3), WeightedBCELoss)  # case, '-', '_' ignored
    with pytest.raises(ValueError, match="unknown loss 'ce'; known: bce, wbce, cb-bce, focal, wfocal, pos-bce") as e:
        create_loss('ce')
    assert type(e.value) is ValueError  # a bad argument, not bad data
    with pytest.raises(ValueError, match="'wfocal' needs pos_counts"):
        create_loss('wfocal')


def test_a_registered_loss_is_available_to_create_loss():
    @LOSSES.register('_test_l1')
    def _l1(**kw): return torch.nn.L1Loss()
    try: assert isinstance(create_loss('_TEST-L1', TABLE3), torch.nn.L1Loss)
    finally: LOSSES.unregister('_test_l1')


def test_bad_inputs_to_forward(xy):
    x, y = xy
    with pytest.raises(CXRDataError, match=r'logits have shape \(5, 14\) but target has \(5, 13\)'):
        WeightedBCELoss()(x, y[:, :13])
    with pytest.raises(CXRDataError, match='mask has shape'):
        WeightedBCELoss()(x, y, torch.ones(5, 1))
    with pytest.raises(CXRDataError, match='w_pos has 3 values but logits have 14 classes'):
        WeightedBCELoss([1, 2, 3], 1)(x, y)
    y_nan = y.clone(); y_nan[0, 0] = float('nan')
    with pytest.raises(CXRDataError, match='NaN'):
        WeightedFocalLoss()(x, y_nan)
    with pytest.raises(CXRDataError, match='w_neg must be finite'):
        WeightedBCELoss(1, [1, float('inf')])
    with pytest.raises(CXRDataError, match='gamma'):
        WeightedFocalLoss(gamma=-1)


# ---- seed 004: inverse-frequency positive weights ('pos-bce') ----

def _seed004_train(n: int = 3460, hernia: int = 5) -> pd.DataFrame:
    "A training table with the report's size (N = 3,460) and its 5 Hernia positives."
    pos = dict.fromkeys(NIH_LABELS, 100) | {'Infiltration': 550, 'Hernia': hernia}
    return pd.DataFrame({k: (np.arange(n) < p).astype(float) for k, p in pos.items()})


def test_inverse_frequency_pos_weight_reproduces_report_hernia_weight():
    w = inverse_frequency_pos_weight(_seed004_train(), NIH_LABELS)
    assert list(w.index) == list(NIH_LABELS)
    assert round(w['Hernia'], 4) == 690.9986                    # seed 004 Sec. 4.2.1
    assert round(inverse_frequency_pos_weight(_seed004_train(), ['Hernia'], eps=0)['Hernia'], 4) == 691.0  # (N-P)/P alone
    assert w['Infiltration'] == pytest.approx((3460 - 550) / (550 + 1e-5))


def test_inverse_frequency_pos_weight_counts_known_labels_only():
    t = pd.DataFrame({'Mass': [1, 0, 0, np.nan, np.nan], 'Edema': [1, 1, 0, 0, 0]})
    w = inverse_frequency_pos_weight(t, ['Mass', 'Edema'], eps=0)
    assert w.tolist() == [2.0, 1.5]


def test_inverse_frequency_pos_weight_empty_class():
    t = _seed004_train(hernia=0)
    with pytest.raises(CXRDataError, match="class 'Hernia' has 0 positive samples"):
        inverse_frequency_pos_weight(t, NIH_LABELS)
    with pytest.warns(UserWarning, match='Hernia'):
        w = inverse_frequency_pos_weight(t, NIH_LABELS, on_empty='warn')
    assert w['Hernia'] == pytest.approx(3460 / 1e-5)           # the report's formula, finite thanks to eps
    with pytest.raises(ValueError, match='on_empty'):
        inverse_frequency_pos_weight(t, NIH_LABELS, on_empty='skip')


def test_pos_bce_is_torch_bce_with_pos_weight(xy):
    x, y = xy
    t = _seed004_train()
    c = label_counts(t)
    fn = create_loss('pos-bce', c.pos, c.n)
    pw = torch.tensor(inverse_frequency_pos_weight(t).to_numpy(), dtype=torch.float32)
    ref = torch.nn.BCEWithLogitsLoss(pos_weight=pw)(x, y)
    assert isinstance(fn, WeightedBCELoss) and torch.allclose(fn(x, y), ref, rtol=1e-6)
    assert torch.equal(fn.w_neg, torch.ones(1))
    m = torch.ones_like(y); m[:, 0] = 0                          # label_mask: class 0 ignored
    ref_m = F.binary_cross_entropy_with_logits(x[:, 1:], y[:, 1:], pos_weight=pw[1:])
    assert torch.allclose(fn(x, y, m), ref_m, rtol=1e-6)
    with pytest.raises(ValueError, match="'pos-bce' needs pos_counts"):
        create_loss('pos-bce')
