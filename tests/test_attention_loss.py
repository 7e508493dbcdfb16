"""Seed 000's attention loss (`losses.attention`): the `published` variant (the authors' code: a term without gradient)
and the differentiable one take the same value in the hard limit of the soft count, on maps from a real Grad-CAM pass;
the term measures the authors' coverage of the prior region by default, or the share of hot pixels inside it."""
import pytest
import torch
from torch import nn
from cxr_notebooks.explain.gradcam import grad_cam
from cxr_notebooks.losses.attention import (AttentionLoss, adaptive_lambda, attention_term, cam_mass_in_prior, in_prior_fraction,
                                            lambda_at, parse_lambda)


class Tiny(nn.Module):
    "conv -> relu -> global mean -> linear: a CAM layer (`conv`) and 2 logits."
    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(1, 6, 3, padding=1), nn.Linear(6, 2)
    def forward(self, x): return self.head(torch.relu(self.conv(x)).mean((2, 3)))


@pytest.fixture
def batch():
    torch.manual_seed(0)
    net, x = Tiny(), torch.randn(6, 1, 16, 16)
    target = torch.tensor([1, 1, 0, 1, 0, 1])
    prior = torch.zeros(6, 1, 16, 16); prior[:, :, 8:] = 1            # lower half
    return net, x, target, prior


def _total(net, x, target, prior, variant, lam=0.0, **kw):
    cams, logits = grad_cam(net, x, target, layer=net.conv, create_graph=variant == 'differentiable')
    if variant == 'published': cams = cams.detach()
    return AttentionLoss(lam, variant, **kw)(logits, target, cams, prior)


def test_published_term_has_exactly_zero_gradient(batch):
    "As in the authors' code (Grad-CAM of a detached copy): at λ = 0 the loss moves no parameter."
    net, x, target, prior = batch
    loss, terms = _total(net, x, target, prior, 'published')
    grads = torch.autograd.grad(loss, list(net.parameters()), allow_unused=True)
    assert terms['attention'] > 0
    assert all(g is None or torch.count_nonzero(g) == 0 for g in grads)


def test_differentiable_term_has_a_gradient(batch):
    net, x, target, prior = batch
    loss, _ = _total(net, x, target, prior, 'differentiable')
    grads = torch.autograd.grad(loss, list(net.parameters()), allow_unused=True)
    assert any(g is not None and g.abs().max() > 0 for g in grads)


def test_published_trains_on_lambda_ce_only(batch):
    "At λ = 0.5 the published gradient is half the cross-entropy gradient, to the last bit of float tolerance."
    net, x, target, prior = batch
    g = lambda loss: torch.cat([p.flatten() for p in torch.autograd.grad(loss, list(net.parameters()))])
    ce = g(_total(net, x, target, prior, 'published', lam=1.0)[0])
    torch.testing.assert_close(g(_total(net, x, target, prior, 'published', lam=0.5)[0]), 0.5 * ce)


def test_both_variants_agree_in_the_hard_limit(batch):
    net, x, target, prior = batch
    pub, t_pub = _total(net, x, target, prior, 'published', lam=0.3)
    dif, t_dif = _total(net, x, target, prior, 'differentiable', lam=0.3, temperature=1e-6)
    assert dif.item() == pytest.approx(pub.item(), abs=1e-4) and t_dif['attention'].item() == pytest.approx(t_pub['attention'].item(), abs=1e-4)
    soft, _ = _total(net, x, target, prior, 'differentiable', lam=0.3, temperature=0.2)
    assert abs(soft.item() - pub.item()) > 1e-4                       # a warm soft count is a different number


def test_negatives_contribute_zero_and_the_default_measure_is_the_authors_coverage():
    "Defect: the term measured the share of hot pixels inside the prior; the authors' code divides by the prior's pixels."
    cams = torch.zeros(3, 4, 4); cams[:, :2] = 0.9; cams[:, 2:, :1] = 0.5   # 8 hot pixels up, 2 warm pixels down
    prior = torch.zeros(3, 4, 4); prior[:, 2:] = 1                             # lower half: 8 pixels
    assert in_prior_fraction(cams, prior).tolist() == pytest.approx([2 / 8] * 3)                    # coverage: 2 of the prior's 8 pixels
    assert in_prior_fraction(cams, prior, measure='share').tolist() == pytest.approx([2 / 10] * 3)  # share: 2 of the 10 hot pixels
    assert in_prior_fraction(cams, prior, threshold=0.6).tolist() == [0.0] * 3
    assert cam_mass_in_prior(cams, prior).tolist() == pytest.approx([1.0 / (7.2 + 1.0)] * 3)
    assert attention_term(cams, prior, torch.tensor([True, False, True])).tolist() == pytest.approx([0.75, 0.0, 0.75])
    assert attention_term(cams, prior, torch.tensor([True, False, True]), measure='share').tolist() == pytest.approx([0.8, 0.0, 0.8])
    assert AttentionLoss(0.0).measure == 'coverage'
    with pytest.raises(ValueError, match='coverage'): in_prior_fraction(cams, prior, measure='recall')
    with pytest.raises(ValueError, match='coverage'): AttentionLoss(0.5, measure='recall')


def test_the_two_measures_differ_by_more_than_twice_on_one_batch():
    "A small hot spot inside a large prior: the share says 'all attention is in the region', coverage says 'a sliver of it is covered'."
    cams = torch.zeros(1, 16, 16); cams[0, 10:12, 4:8] = 1.0                  # 8 hot pixels, all inside
    prior = torch.zeros(1, 16, 16); prior[0, 8:] = 1                           # lower half: 128 pixels
    share, cover = in_prior_fraction(cams, prior, measure='share'), in_prior_fraction(cams, prior, measure='coverage')
    assert share.item() == 1.0 and cover.item() == pytest.approx(8 / 128) and share.item() > 2 * cover.item()
    everywhere = torch.ones(1, 16, 16)                                           # a map hot everywhere
    assert in_prior_fraction(everywhere, prior).item() == 1.0 and in_prior_fraction(everywhere, prior, measure='share').item() == 0.5


def test_lambda_schedule_and_arguments():
    assert lambda_at('adaptive', 0) == 1.0 and lambda_at('*', 10) == pytest.approx(0.77) and lambda_at('adaptive', 40) == 0.2
    assert adaptive_lambda(35) == pytest.approx(0.2) and lambda_at(0.75, 99) == 0.75 and parse_lambda('0.25') == 0.25
    for bad in (-0.1, 1.2, 'half'):
        with pytest.raises(ValueError, match='adaptive'): parse_lambda(bad)
    with pytest.raises(ValueError, match='published'): AttentionLoss(0.5, 'soft')
    with pytest.raises(ValueError, match='temperature'): AttentionLoss(0.5, 'differentiable', temperature=0)


class Two(nn.Module):
    "Two conv layers (CAM at the second), global mean, linear."
    def __init__(self):
        super().__init__()
        self.conv1, self.conv, self.head = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8, 2)
    def forward(self, x): return self.head(torch.relu(self.conv(torch.relu(self.conv1(x)))).mean((2, 3)))


@pytest.mark.parametrize('measure', ['share', 'coverage'])
@pytest.mark.parametrize('variant', ['published', 'differentiable'])
def test_only_the_differentiable_term_moves_attention_into_the_prior(variant, measure):
    "Forty Adam steps on the attention term alone (λ = 0): the published one leaves the maps as they were, whichever measure."
    torch.manual_seed(0)
    net, x, y = Two(), torch.randn(8, 1, 16, 16), torch.ones(8, dtype=torch.long)
    prior = torch.zeros(8, 1, 16, 16); prior[:, :, :8] = 1
    value = lambda: in_prior_fraction(grad_cam(net, x, y, layer=net.conv, create_graph=False)[0].detach(), prior, measure=measure).mean().item()
    opt, loss_fn, before = torch.optim.Adam(net.parameters(), 1e-2), AttentionLoss(0.0, variant, measure=measure), value()
    for _ in range(40):
        cams, logits = grad_cam(net, x, y, layer=net.conv, create_graph=variant == 'differentiable')
        loss, _ = loss_fn(logits, y, cams if variant == 'differentiable' else cams.detach(), prior)
        opt.zero_grad(); loss.backward(); opt.step()
    if variant == 'published': assert value() == before
    else: assert before < 0.6 and value() > 0.95
