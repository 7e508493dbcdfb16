"Contract tests for cxr_notebooks.explain.gradcam: same maps as pytorch-grad-cam, differentiable, no hooks left behind."
import numpy as np
import pytest
import torch
from torch import nn
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from cxr_notebooks.explain.gradcam import grad_cam
from cxr_notebooks.models.backbones import create_model, target_layer

torch.set_num_threads(1)


def no_hooks(model: nn.Module) -> bool:
    return all(not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or getattr(m, '_backward_pre_hooks', None))
               for m in model.modules())


def small_cnn(in_chans=3, n_classes=3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_chans, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, n_classes))


@pytest.mark.parametrize('name', ['resnet50', 'densenet121', 'efficientnet_b0', 'pvt_v2_b2_li'])
def test_equals_pytorch_grad_cam_at_inference(name):
    # pytorch-grad-cam: min-max the low-res map, cv2.resize (INTER_LINEAR, half-pixel centres = torch bilinear with
    # align_corners=False), min-max again. Bilinear resizing commutes with that affine scaling, so the maps agree up to
    # float32 rounding; its 1e-7 is added to max=~1 the second time (relative 1e-7). 1e-5 leaves room for both.
    torch.manual_seed(0)
    m = create_model(name, 3).eval()
    x, cls = torch.rand(4, 3, 64, 64), [0, 1, 2, 1]
    ours, logits = grad_cam(m, x, cls)
    with GradCAM(model=m, target_layers=[target_layer(m)]) as cam:
        theirs = cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in cls])
    assert ours.shape == (4, 64, 64) and ours.dtype == torch.float32 and logits.shape == (4, 3)
    assert (ours.detach().amax((1, 2)) > 0.99).sum() >= 2  # non-trivial maps are compared (random init: some are all 0)
    np.testing.assert_allclose(ours.detach().numpy(), theirs, atol=1e-5)
    assert no_hooks(m)


def test_cam_gradient_reaches_parameters_through_activations_and_weights():
    torch.manual_seed(0)
    net = small_cnn().train()
    x = torch.rand(4, 3, 32, 32)
    cam, logits = grad_cam(net, x, [0, 1, 2, 0], layer=net[4])
    assert cam.requires_grad and cam.shape == (4, 32, 32)
    cam[:, 8:20, 8:20].sum().backward()  # CAM mass inside a region
    grads = {n: p.grad for n, p in net.named_parameters()}
    assert grads.pop('7.bias') is None  # y = W pool(A) + b: dy/dA, hence the CAM, does not depend on b
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads['0.weight'].abs().sum() > 0 and grads['3.weight'].abs().sum() > 0
    # the head only enters the CAM through the Grad-CAM weights dy/dA: proof that create_graph=True kept them in the graph
    assert grads['7.weight'].abs().sum() > 0


def test_create_graph_false_detaches_the_weights_and_logits_stay_usable():
    torch.manual_seed(0)
    net = small_cnn().train()
    x = torch.rand(2, 3, 32, 32)
    cam, logits = grad_cam(net, x, 1, layer=net[4], create_graph=False, normalize=False)
    (cam.sum() + logits.sum()).backward()  # the forward graph was retained for the classification loss
    cam2, _ = grad_cam(net, x, 1, layer=net[4], create_graph=False)
    net.zero_grad(); cam2.sum().backward()
    assert net[7].weight.grad is None or net[7].weight.grad.abs().sum() == 0


def test_no_hooks_left_on_success_or_exception():
    net = small_cnn()
    grad_cam(net, torch.rand(1, 3, 16, 16), 0, layer='4')
    assert no_hooks(net)
    with pytest.raises(RuntimeError): grad_cam(net, torch.rand(1, 5, 16, 16), 0, layer=net[4])  # forward fails: 5 channels
    assert no_hooks(net)
    with pytest.raises(ValueError, match='out of range: the model has 3 outputs'): grad_cam(net, torch.rand(1, 3, 16, 16), 3, layer=net[4])
    with pytest.raises(ValueError, match='2 class indices for 1 images'): grad_cam(net, torch.rand(1, 3, 16, 16), [0, 1], layer=net[4])
    with torch.no_grad(), pytest.raises(ValueError, match='autograd graph'): grad_cam(net, torch.rand(1, 3, 16, 16), 0, layer=net[4])
    with pytest.raises(ValueError, match='not called'): grad_cam(net, torch.rand(1, 3, 16, 16), 0, layer=nn.ReLU())
    assert no_hooks(net)


def test_layer_by_name_default_tokens_and_autocast():
    m = create_model('mobilenetv2_100', 4).train()
    a, _ = grad_cam(m, torch.rand(2, 3, 32, 32), 1)                 # the registered layer (bn2)
    assert a.shape == (2, 32, 32) and no_hooks(m)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        b, logits = grad_cam(m, torch.rand(2, 3, 32, 32), [0, 3], layer='bn2')
    assert b.dtype == torch.float32 and logits.dtype == torch.bfloat16 and torch.isfinite(b).all() and b.requires_grad

    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.mix, self.head = nn.Conv2d(1, 8, 4, 4), nn.Linear(8, 8), nn.Linear(8, 2)
        def forward(self, x): return self.head(self.mix(self.embed(x).flatten(2).transpose(1, 2)).mean(1))
    t = Tokens()
    c, _ = grad_cam(t, torch.rand(2, 1, 16, 16), 0, layer='mix')  # (B, 16, 8) tokens folded onto a 4x4 grid
    assert c.shape == (2, 16, 16) and no_hooks(t)


def test_pvt_stage_output():
    m = create_model('pvt', 2).eval()
    c, _ = grad_cam(m, torch.rand(1, 3, 64, 64), 1)
    assert c.shape == (1, 64, 64) and torch.isfinite(c).all()
