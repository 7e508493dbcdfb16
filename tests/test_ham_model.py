"""HAM network (seed 001, models.ham): LSE pooling limits, online CAM = classic CAM, FAB, Table VI switches, shapes."""
import pytest
import torch
from cxr_notebooks.models.backbones import create_model, target_layer
from cxr_notebooks.models.ham import HAM, ForegroundAttention, lse_pool, online_cam


def _small(**kw):
    return HAM(3, backbone='resnet18', encoder_channels=16, **kw).eval()


def test_lse_tends_to_mean_and_max():
    x = torch.randn(2, 4, 6, 5, dtype=torch.float64)
    assert torch.allclose(lse_pool(x, 1e-5), x.mean((2, 3)), atol=1e-4)
    assert torch.allclose(lse_pool(x, 1e4), x.amax((2, 3)), atol=1e-2)
    mid = lse_pool(x, 6.0)
    assert (x.mean((2, 3)) < mid).all() and (mid < x.amax((2, 3))).all()
    assert torch.isfinite(lse_pool(torch.full((1, 1, 4, 4), 1e3), 6.0)).all()   # no overflow at large activations
    with pytest.raises(ValueError, match='r > 0'): lse_pool(x, 0)


def test_online_cam_equals_classic_cam():
    f, w = torch.randn(2, 5, 4, 4), torch.randn(3, 5)
    classic = torch.relu(torch.einsum('kc,bchw->bkhw', w, f))
    assert torch.allclose(online_cam(f, w), classic, atol=1e-6)
    m = _small()
    with torch.no_grad(): out = m(torch.randn(2, 3, 64, 64))
    assert torch.allclose(out['cam'], torch.relu(torch.einsum('kc,bchw->bkhw', m.head.weight, out['features'])), atol=1e-5)
    assert torch.allclose(out['pos_cam'], torch.relu(torch.einsum('kc,bchw->bkhw', m.pn_head.weight, out['features'])), atol=1e-5)


def test_online_cam_weight_gradient_switch():
    "Paper (default): the attention losses reach the head weights; the authors' code detaches them."
    f, w = torch.randn(1, 4, 3, 3), torch.randn(2, 4, requires_grad=True)
    online_cam(f, w).sum().backward(); assert w.grad.abs().sum() > 0
    w.grad = None
    out = online_cam(f, w, detach_weight=True)
    assert not out.requires_grad


def test_fab_starts_as_identity_and_adds_map_to_every_channel():
    fab, x = ForegroundAttention(8), torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        y, a = fab(x)
        assert torch.equal(y, x) and a.shape == (2, 1, 5, 5)
        fab.gamma.fill_(2.0)
        y, a = fab(x)
    assert torch.allclose(y - x, 2.0 * a.expand_as(x), atol=1e-6)
    with pytest.raises(ValueError): ForegroundAttention(8, channel=False, position=False)


@pytest.mark.parametrize('fab', ['none', 'channel', 'position', 'both'])
def test_table6_switches(fab):
    m = _small(fab=fab, positive_attention=fab != 'none')
    with torch.no_grad(): out = m(torch.randn(1, 3, 64, 64))
    assert out['cam'].shape == (1, 3, 8, 8)
    assert (out['foreground'] is None) == (fab == 'none') and (out['pos_cam'] is None) == (fab == 'none')


def test_stride_and_pooling_switches():
    m = _small(output_stride=32, pooling='gap', fab='none', positive_attention=False)
    with torch.no_grad(): out = m(torch.randn(1, 3, 64, 64))
    assert out['cam'].shape == (1, 3, 2, 2)
    with pytest.raises(ValueError, match='pooling'): _small(pooling='max')
    with pytest.raises(ValueError, match='fab'): _small(fab=None)


def test_registered_in_timm_and_backbones_and_switches_survive_the_factory():
    "Defect found while building: timm drops None kwargs, so fab=None silently built a FAB; 'none' is a string now."
    m = create_model('ham', 4, backbone='resnet18', encoder_channels=16, fab='none', positive_attention=False)
    assert m.fab is None and m.pn_head is None and m.cxr_backbone == 'ham_resnet50'
    m2 = create_model('ham_resnet50', 4, backbone='resnet18', encoder_channels=16)
    assert target_layer(m2) is m2.conv3


@pytest.mark.slow
def test_shapes_at_512_with_the_papers_backbone():
    m = create_model('ham_resnet50', 14).eval()
    with torch.no_grad(): out = m(torch.randn(1, 3, 512, 512))
    assert out['logits'].shape == (1, 14) and out['pn_logit'].shape == (1, 1)
    assert out['cam'].shape == (1, 14, 64, 64) and out['pos_cam'].shape == (1, 1, 64, 64) and out['foreground'].shape == (1, 1, 64, 64)
    assert out['features'].shape == (1, 512, 64, 64)
