"Contract tests for cxr_notebooks.explain.cams: Grad-CAM/Grad-CAM++ on every backbone, localization sanity, overlays, errors."
import numpy as np
import pytest
import torch
from torch import nn

from cxr_notebooks.explain.cams import compute_cam, overlay_cam, tokens_to_maps
from cxr_notebooks.core import CXRDataError
from cxr_notebooks.models.backbones import BACKBONES, create_model

torch.set_num_threads(1)


def two_detector_net() -> nn.Module:
    "Class 0 = pooled 'bright area' detector, class 1 = pooled 'checkerboard texture' detector (fixed weights)."
    conv = nn.Conv2d(3, 2, 3, padding=1)
    with torch.no_grad():
        conv.weight[0] = 1 / 27; conv.bias[0] = -0.75
        conv.weight[1] = torch.tensor([[0., -1, 0], [-1, 4, -1], [0, -1, 0]]) / 3; conv.bias[1] = -2.5
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def square_and_texture(h=48, w=64, swap=False) -> torch.Tensor:
    img = np.zeros((h, w), np.float32)
    (sq, tx) = ((slice(4, 16), slice(4, 16)), (slice(30, 44), slice(44, 60)))
    if swap: sq, tx = tx, sq
    img[sq] = 1
    yy, xx = np.mgrid[tx]; img[tx] = (yy + xx) % 2
    return torch.tensor(img)[None].repeat(3, 1, 1)


@pytest.mark.parametrize('method', ['gradcam', 'gradcam++'])
def test_cam_peaks_where_the_class_looks(method):
    net = two_detector_net()
    x = torch.stack([square_and_texture(), square_and_texture(), square_and_texture(swap=True)])
    cams = compute_cam(net, x, [0, 1, 0], method=method, target_layer=net[1])
    assert cams.shape == (3, 48, 64) and cams.dtype == np.float32
    peaks = [np.unravel_index(c.argmax(), c.shape) for c in cams]
    assert 4 <= peaks[0][0] < 16 and 4 <= peaks[0][1] < 16      # bright square, top-left
    assert 30 <= peaks[1][0] < 44 and 44 <= peaks[1][1] < 60    # texture, bottom-right
    assert 30 <= peaks[2][0] < 44 and 44 <= peaks[2][1] < 60    # square moved: so does the CAM
    assert cams[0][30:44, 44:60].max() < 0.2                    # class-discriminative


def test_model_state_is_restored():
    net = two_detector_net().train()
    x = square_and_texture()[None]
    net(x).sum().backward()
    g = net[0].weight.grad.clone()
    net[0].bias.requires_grad_(False)
    compute_cam(net, x, 1, target_layer=net[1])
    assert net.training and net[0].weight.requires_grad and not net[0].bias.requires_grad
    assert torch.equal(net[0].weight.grad, g)


@pytest.mark.parametrize('name', BACKBONES.names())
def test_every_backbone(name):
    m = create_model(name, 14)
    for method in ('gradcam', 'gradcam++'):
        c = compute_cam(m, torch.rand(2, 3, 64, 64), [3, 7], method=method)
        assert c.shape == (2, 64, 64) and np.isfinite(c).all() and c.min() >= 0 and c.max() <= 1
        if name in ('vgg16', 'resnet101', 'densenet121'): break  # the slow ones on CPU: one method is enough


def test_layer_by_name_and_backbone():
    m = create_model('resnet50', 3)
    a = compute_cam(m, torch.rand(1, 3, 64, 64), 0, target_layer='layer3[-1]')
    b = compute_cam(nn.Sequential(m), torch.rand(1, 3, 64, 64), 0, target_layer='0.layer3[-1]')
    assert a.shape == b.shape == (1, 64, 64)
    c = compute_cam(nn.Sequential(m), torch.rand(3, 64, 64), 1, target_layer=m.layer4)  # a single CHW image
    assert c.shape == (1, 64, 64)


def test_tokens_to_maps():
    assert tuple(tokens_to_maps(torch.zeros(2, 49, 8)).shape) == (2, 8, 7, 7)
    assert tuple(tokens_to_maps(torch.zeros(2, 50, 8)).shape) == (2, 8, 7, 7)
    with pytest.raises(CXRDataError, match='12 tokens'): tokens_to_maps(torch.zeros(2, 12, 8))
    with pytest.raises(CXRDataError, match=r'\(2, 8\)'): tokens_to_maps(torch.zeros(2, 8))


def test_compute_cam_bad_inputs():
    net = two_detector_net()
    x = square_and_texture()[None]
    with pytest.raises(ValueError, match="unknown CAM method 'scorecam'; known: gradcam, gradcam\\+\\+"):
        compute_cam(net, x, 0, method='scorecam', target_layer=net[1])
    with pytest.raises(CXRDataError, match=r'expected \(B, C, H, W\)'): compute_cam(net, x[0, 0], 0, target_layer=net[1])
    with pytest.raises(ValueError, match='2 class indices for 1 images'): compute_cam(net, x, [0, 1], target_layer=net[1])
    with pytest.raises(ValueError, match='class_idx 5 out of range: the model has 2 outputs'):
        compute_cam(net, x, 5, target_layer=net[1])
    with pytest.raises(ValueError, match='cxr_backbone'): compute_cam(net, x, 0)
    with pytest.raises(ValueError, match="unknown backbone 'alexnet'; known: densenet121"): compute_cam(net, x, 0, backbone='alexnet')
    assert compute_cam(net, x, 0, method='Grad-CAM++', target_layer=net[1]).shape == (1, 48, 64)  # registry spellings


def test_overlay_cam():
    gray = np.tile(np.linspace(0, 255, 60, dtype=np.uint8), (40, 1))
    cam = np.zeros((10, 15), np.float32); cam[:5, :7] = 1
    o = overlay_cam(gray, cam, alpha=0.5)
    assert o.shape == (40, 60, 3) and o.dtype == np.uint8
    assert o[5, 5, 0] > o[35, 5, 0]  # JET red where the CAM is 1, blue-ish where it is 0
    assert overlay_cam(np.zeros((1, 8, 8), np.float32), np.ones((8, 8))).shape == (8, 8, 3)
    with pytest.raises(CXRDataError, match='undo the normalization'): overlay_cam(np.full((4, 4), -1.0), np.zeros((4, 4)))
    with pytest.raises(CXRDataError, match='alpha'): overlay_cam(gray, cam, alpha=1.5)
    with pytest.raises(CXRDataError, match=r'cam has shape \(2, 4, 4\)'): overlay_cam(gray, np.zeros((2, 4, 4)))
    with pytest.raises(CXRDataError, match=r'image has shape \(4, 4, 2\)'): overlay_cam(np.zeros((4, 4, 2)), np.zeros((4, 4)))
