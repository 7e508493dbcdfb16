"""HAM losses (seed 001, losses.ham): Eqs. 2-7 as printed and as the authors' code computes them, the SR rule."""
import pytest
import torch
from cxr_notebooks.losses.ham import (HAMLoss, amse_loss, bound_loss, box_masks, minmax_normalize, refine_box_mask, refined_attention,
                                      soft_mask, union_loss, union_map)


def sq(y0, y1, x0, x1, size=8):
    m = torch.zeros(size, size); m[y0:y1, x0:x1] = 1; return m


def test_soft_mask_and_normalisation():
    assert torch.allclose(soft_mask(torch.tensor([0.4])), torch.tensor([0.5]))
    m = torch.tensor([[[[1., 3.], [5., 9.]]]])
    assert torch.allclose(minmax_normalize(m), torch.tensor([[[[0, .25], [.5, 1.]]]]))
    assert torch.equal(minmax_normalize(torch.ones(1, 1, 2, 2)), torch.zeros(1, 1, 2, 2))      # flat map: 0, not NaN
    a, b = refined_attention(m, 4, order='paper'), refined_attention(m, 4, order='code')
    assert a.shape == b.shape == (1, 1, 4, 4) and not torch.allclose(a, b)                     # the two interpolation orders differ


@pytest.mark.parametrize('variant', ['paper', 'code'])
def test_bound_is_zero_when_every_abnormality_map_lies_inside_the_positive_map(variant):
    P = sq(0, 8, 0, 8)[None, None]; P[..., 0, 7] = 0                                          # not flat, covers both maps
    A = torch.stack([sq(0, 4, 0, 4), sq(4, 8, 4, 8)])[None]
    assert float(bound_loss(A, P, torch.ones(1, 2), variant)) == pytest.approx(0, abs=1e-6)


@pytest.mark.parametrize('variant', ['paper', 'code'])
def test_union_is_zero_when_the_positive_map_is_the_union(variant):
    A, y = torch.stack([sq(0, 4, 0, 4), sq(4, 8, 4, 8), sq(0, 8, 6, 8)])[None], torch.tensor([[1., 1., 0.]])
    assert float(union_loss(A, union_map(A, y), y, variant)) == pytest.approx(0, abs=1e-6)
    assert float(union_loss(A, A[:, 2:3], y, variant)) > 0.4                                   # a positive map on a negative class's region


def test_hand_computed_bound_union_amse():
    half, a = sq(0, 8, 0, 4)[None, None], sq(2, 6, 2, 6)[None, None]
    assert float(bound_loss(a, half, torch.ones(1, 1))) == pytest.approx(0.5, abs=1e-6)       # 8 of 16 attention pixels inside
    assert float(union_loss(a, half, torch.ones(1, 1))) == pytest.approx(0.75, abs=1e-6)      # 8 of 32 positive pixels in the union
    G, has = box_masks([torch.tensor([[2., 2., 6., 6.]])], [torch.tensor([0])], 1, 8)
    assert int(G.sum()) == 16 and has.tolist() == [[True]]
    assert float(amse_loss(G * 10, G, has)) == pytest.approx(0, abs=1e-4)
    # T is 1 on the 16 shifted pixels, G on 16 others: sum (T-G)^2 = 32, sum T + sum G = 32
    assert float(amse_loss(torch.roll(G, 4, -1) * 10, G, has)) == pytest.approx(1, abs=1e-4)


def test_paper_and_code_reductions_differ_as_documented():
    "Bound: paper averages per image then over images, code per class then over classes; AMSE pooled over the batch in the code."
    P = torch.ones(2, 1, 4, 4); P[..., 0, 0] = 0
    A = torch.zeros(2, 2, 4, 4); A[0, 0, 0, 0] = 1; A[0, 1, 3, 3] = 1; A[1, 0, 0, 0] = 1; A[1, 1, 3, 3] = 1
    y = torch.tensor([[1., 1.], [1., 0.]])                                                      # outside P: image 0 class 0, image 1 class 0
    per = torch.tensor([[1., 0.], [1., 0.]])                                                    # per (image, class) losses of the binary maps
    paper, code = float(bound_loss(A, P, y, 'paper')), float(bound_loss(A, P, y, 'code', code_beta=0.5))
    assert paper == pytest.approx(((per * y).sum(1) / y.sum(1)).mean().item(), abs=1e-4) == pytest.approx(0.75)  # (0.5 + 1) / 2
    assert code == pytest.approx(((per * y).sum(0) / y.sum(0)).mean().item(), abs=1e-4) == pytest.approx(0.5)    # (1 + 0) / 2
    G, has = box_masks([torch.tensor([[0., 0., 8., 8.]]), torch.tensor([[0., 0., 2., 2.]])], [torch.tensor([0]), torch.tensor([0])], 1, 8)
    miss = torch.zeros(2, 1, 8, 8); miss[:, :, 7, 7] = 1                                        # both maps miss their boxes
    assert float(amse_loss(miss * 10, G, has, 'paper')) != pytest.approx(float(amse_loss(miss * 10, G, has, 'code')), abs=1e-3)


def test_gradients_finite_at_all_zero_maps():
    outputs = {'logits': torch.zeros(2, 3, requires_grad=True), 'pn_logit': torch.zeros(2, 1, requires_grad=True),
               'cam': torch.zeros(2, 3, 4, 4, requires_grad=True), 'pos_cam': torch.zeros(2, 1, 4, 4, requires_grad=True)}
    G, has = box_masks([torch.tensor([[0., 0., 16., 16.]]), torch.zeros(0, 4)], [torch.tensor([1]), torch.zeros(0, dtype=torch.long)], 3, 16)
    for variant in ('paper', 'code'):
        loss, terms = HAMLoss(variant=variant)(outputs, torch.tensor([[1., 1., 0.], [0., 0., 0.]]), masks=G, has_box=has)
        loss.backward()
        assert sorted(terms) == ['ab', 'amse', 'bound', 'pn', 'union'] and torch.isfinite(loss)
        assert all(torch.isfinite(t.grad).all() for t in outputs.values())


def test_total_is_eq7_and_switches():
    torch.manual_seed(0)
    outputs = {'logits': torch.randn(2, 2), 'pn_logit': torch.randn(2, 1), 'cam': torch.rand(2, 2, 4, 4), 'pos_cam': torch.rand(2, 1, 4, 4)}
    y = torch.tensor([[1., 0.], [0., 1.]])
    G, has = box_masks([torch.tensor([[0., 0., 8., 8.]]), torch.zeros(0, 4)], [torch.tensor([0]), torch.zeros(0, dtype=torch.long)], 2, 16)
    total, t = HAMLoss()(outputs, y, masks=G, has_box=has)
    assert float(total) == pytest.approx(float(t['ab'] + 0.5 * t['amse'] + 0.01 * t['pn'] + 0.001 * t['bound'] + 0.001 * t['union']), rel=1e-6)
    assert sorted(HAMLoss(bound=False, union=False)(outputs, y)[1]) == ['ab', 'pn']            # z = 0 without boxes
    no_pa = {**outputs, 'pn_logit': None, 'pos_cam': None}
    assert sorted(HAMLoss()(no_pa, y, masks=G, has_box=has)[1]) == ['ab', 'amse']
    with pytest.raises(ValueError, match='variant'): HAMLoss(variant='printed')


def test_self_refinement_rule():
    box = sq(0, 4, 0, 4).bool()
    assert torch.equal(refine_box_mask(sq(0, 4, 0, 2), box), sq(0, 4, 0, 2).bool())            # IoU 0.5 >= 0.3: box ∩ attention
    assert torch.equal(refine_box_mask(sq(3, 8, 3, 8), box), box)                               # IoU 1/40 < 0.3: keep the box
    assert torch.equal(refine_box_mask(torch.zeros(8, 8), box), box)


def test_plain_mse_reproduces_table_vii_ours_mse():
    "Table VII's 'Ours-MSE': the box term as a plain MSE (mean squared error over the pixels) instead of the AMSE of Eq. 6."
    G, has = box_masks([torch.tensor([[2., 2., 6., 6.]])], [torch.tensor([0])], 1, 8)
    miss = torch.roll(G, 4, -1) * 10                                                            # T = 1 on 16 pixels, G on 16 others
    assert float(amse_loss(miss, G, has, box_loss='mse')) == pytest.approx(32 / 64, abs=1e-4)  # 32 wrong pixels of 64
    assert float(amse_loss(miss, G, has, box_loss='amse')) == pytest.approx(1, abs=1e-4)       # 32 / (16 + 16)
    assert float(amse_loss(G * 10, G, has, box_loss='mse')) == pytest.approx(0, abs=1e-4)
    for variant in ('paper', 'code'):
        assert float(amse_loss(miss, G, has, variant, box_loss='mse')) == pytest.approx(0.5, abs=1e-4)
    torch.manual_seed(0)
    outputs = {'logits': torch.randn(1, 1), 'pn_logit': torch.randn(1, 1), 'cam': miss, 'pos_cam': torch.rand(1, 1, 8, 8)}
    total, t = HAMLoss(box_loss='mse')(outputs, torch.ones(1, 1), masks=G, has_box=has)
    assert sorted(t) == ['ab', 'bound', 'mse', 'pn', 'union'] and float(t['mse']) == pytest.approx(0.5, abs=1e-4)
    assert float(total) == pytest.approx(float(t['ab'] + 0.5 * t['mse'] + 0.01 * t['pn'] + 0.001 * t['bound'] + 0.001 * t['union']), rel=1e-6)
    with pytest.raises(ValueError, match='amse'): HAMLoss(box_loss='l1')
    with pytest.raises(ValueError, match='amse'): amse_loss(miss, G, has, box_loss='l1')
