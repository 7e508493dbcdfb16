"Contract tests for cxr_notebooks.models.backbones: every seed backbone, target layers, weight loading and the offline failure."
import time
import warnings

import pytest
import torch
from torch import nn

from cxr_notebooks.core import CXRDataError
from cxr_notebooks.models.backbones import (MODEL_SPECS, PretrainedWeightsUnavailable, PretrainedWeightsWarning,
                                  backbone_name, create_model, hub_reachable, load_weights, target_layer)

torch.set_num_threads(1)  # tiny forwards on 2 shared cores: extra threads only add contention


@pytest.mark.parametrize('name', list(MODEL_SPECS))
def test_backbone_builds_forwards_and_resolves_target(name):
    m = create_model(name, 14).eval()
    with torch.no_grad(): y = m(torch.randn(1, 3, 32, 32))  # 32: smallest side every backbone (PVT: multiple of 32) accepts
    assert tuple(y.shape) == (1, 14)
    layer = target_layer(m)
    assert isinstance(layer, nn.Module) and layer is target_layer(m, MODEL_SPECS[name].target_layer)
    assert m.cxr_backbone == name and m.pretrained_loaded is False and m.pretrained_source is None
    if name == 'vgg16':  # seed 000's features[28] is the last conv (torchvision indexing); its ReLU must not overwrite it
        assert layer is m.features[28] and isinstance(layer, nn.Conv2d) and layer.out_channels == 512
        assert isinstance(m.features[29], nn.ReLU) and not m.features[29].inplace
        assert not any(isinstance(x, nn.Conv2d) for x in list(m.features)[29:])


def test_pinned_target_layers_and_sizes():
    assert {k: s.target_layer for k, s in MODEL_SPECS.items()} == {
        'densenet121': 'features.norm5', 'resnet50': 'layer4[-1]', 'resnet101': 'layer4[-1]', 'vgg16': 'features[28]',
        'efficientnet_b0': 'bn2', 'efficientnet_b3': 'bn2', 'mobilenetv2_100': 'bn2', 'pvt_v2_b2_li': 'stages[-1]'}
    assert MODEL_SPECS['efficientnet_b3'].input_size == 300 and MODEL_SPECS['densenet121'].input_size == 224


def test_aliases_and_unknown_name():
    assert backbone_name('DenseNet-121') == 'densenet121'
    assert backbone_name('efficientnet-b3') == 'efficientnet_b3'
    assert backbone_name('PVT') == 'pvt_v2_b2_li'
    with pytest.raises(CXRDataError, match='supported: densenet121'): create_model('inception_v3', 14)


def test_bad_arguments():
    with pytest.raises(CXRDataError, match='on_missing_weights'): create_model('resnet50', 14, on_missing_weights='ignore')
    with pytest.raises(CXRDataError, match='num_classes'): create_model('resnet50', 0)
    m = create_model('mobilenetv2_100', 3)
    with pytest.raises(CXRDataError, match="'nope'"): target_layer(m, 'blocks.nope')
    with pytest.raises(CXRDataError, match='cxr_backbone'): target_layer(nn.Sequential(nn.Conv2d(1, 1, 1)))
    assert target_layer(nn.Sequential(nn.Conv2d(1, 1, 1), nn.ReLU()), '[-1]') is not None


def test_in_chans_and_drop_rate():
    m = create_model('mobilenetv2_100', 2, in_chans=1, drop_rate=0.3)
    assert m.conv_stem.in_channels == 1 and m.drop_rate == pytest.approx(0.3)


def test_local_weights_round_trip_with_new_head(tmp_path):
    src = create_model('mobilenetv2_100', 1000)
    p = tmp_path / 'ckpt.pth'
    torch.save({'state_dict': {'module.' + k: v for k, v in src.state_dict().items()}}, p)  # DataParallel-style checkpoint
    m = create_model('mobilenet-v2', 14, pretrained=True, weights=p)
    assert m.pretrained_loaded and m.pretrained_source == str(p)
    assert torch.equal(m.conv_stem.weight, src.conv_stem.weight) and m.classifier.out_features == 14
    left = load_weights(create_model('mobilenetv2_100', 14), p)
    assert sorted(left) == ['classifier.bias', 'classifier.weight']
    g = create_model('mobilenetv2_100', 14, weights=p, in_chans=1)  # RGB stem adapted to grayscale
    assert g.pretrained_loaded and g.conv_stem.weight.shape[1] == 1


def test_bad_weights_file_raises_or_warns(tmp_path):
    with pytest.raises(PretrainedWeightsUnavailable, match='does not exist'):
        create_model('mobilenetv2_100', 14, weights=tmp_path / 'missing.pth')
    p = tmp_path / 'other_arch.pth'
    torch.save(create_model('efficientnet_b0', 14).state_dict(), p)
    with pytest.raises(PretrainedWeightsUnavailable, match='other_arch.pth'):
        create_model('mobilenetv2_100', 14, weights=p)
    q = tmp_path / 'junk.pth'; torch.save([1, 2, 3], q)
    with pytest.raises(PretrainedWeightsUnavailable, match='junk.pth'):
        create_model('mobilenetv2_100', 14, weights=q)


@pytest.mark.skipif(hub_reachable(), reason='needs an offline machine')
def test_offline_pretrained_raises_fast():
    t = time.perf_counter()
    with pytest.raises(PretrainedWeightsUnavailable, match='NOT loaded'):
        create_model('mobilenetv2_100', 14, pretrained=True)
    print(f'offline failure in {time.perf_counter() - t:.2f} s')  # ~0.1 s here vs ~45 s of hub retries without the probe


@pytest.mark.skipif(hub_reachable(), reason='needs an offline machine')
def test_offline_pretrained_warn_flags_and_prints(capsys):
    with pytest.warns(PretrainedWeightsWarning, match='NOT loaded'):
        m = create_model('mobilenetv2_100', 14, pretrained=True, on_missing_weights='warn')
    assert m.pretrained_loaded is False and m.pretrained_source is None
    assert '!!! ImageNet weights NOT loaded: training mobilenetv2_100 from scratch !!!' in capsys.readouterr().out
