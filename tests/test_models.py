"Contract tests for cxr_notebooks.models.backbones: the registry, target layers, weight loading and the offline failure."
import importlib.util
import socket
import time
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from cxr_notebooks.models.backbones import (BACKBONES, BackboneSpec, PretrainedWeightsUnavailable, PretrainedWeightsWarning,
                                            create_model, hub_offline, hub_reachable, register_backbone, target_layer)

torch.set_num_threads(1)  # tiny forwards on 2 shared cores: extra threads only add contention

SEEDS = ['densenet121', 'resnet50', 'resnet101', 'vgg16', 'efficientnet_b0', 'efficientnet_b3', 'mobilenetv2_100', 'pvt_v2_b2_li']


@pytest.fixture
def offline():
    "Skip unless the hub is unreachable (probed when the test runs, never at import/collection)."
    if hub_reachable(): pytest.skip('needs an offline machine')


@pytest.fixture
def no_sockets(monkeypatch):
    "Record (and refuse) every attempt to open a network connection."
    opened = []
    def refuse(*a, **k): opened.append(a); raise OSError('network disabled by the test')
    monkeypatch.setattr(socket, 'create_connection', refuse)
    monkeypatch.setattr(socket.socket, 'connect', lambda self, *a: refuse(*a))
    return opened


def test_collecting_this_file_opens_no_socket(no_sockets):
    "Defect: the old module called hub_reachable() in a skipif at import, i.e. while pytest collected."
    spec = importlib.util.spec_from_file_location('_test_models_reimport', Path(__file__))
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    assert no_sockets == []


@pytest.mark.parametrize('name', SEEDS)
def test_backbone_builds_forwards_and_resolves_target(name):
    m = create_model(name, 14).eval()
    with torch.no_grad(): y = m(torch.randn(1, 3, 32, 32))  # 32: smallest side every backbone (PVT: multiple of 32) accepts
    assert tuple(y.shape) == (1, 14)
    layer = target_layer(m)
    assert isinstance(layer, nn.Module) and layer is target_layer(m, BACKBONES.get(name).target_layer)
    assert m.cxr_backbone == name and m.pretrained_loaded is False and m.pretrained_source is None
    if name == 'vgg16':  # seed 000's features[28] is the last conv (torchvision indexing); its ReLU must not overwrite it
        assert layer is m.features[28] and isinstance(layer, nn.Conv2d) and layer.out_channels == 512
        assert isinstance(m.features[29], nn.ReLU) and not m.features[29].inplace
        assert not any(isinstance(x, nn.Conv2d) for x in list(m.features)[29:])


def test_registry_pins_seed_backbones():
    assert BACKBONES.names()[:8] == SEEDS and all(isinstance(BACKBONES.get(k), BackboneSpec) for k in BACKBONES)
    assert {k: BACKBONES.get(k).target_layer for k in SEEDS} == {
        'densenet121': 'features.norm5', 'resnet50': 'layer4[-1]', 'resnet101': 'layer4[-1]', 'vgg16': 'features[28]',
        'efficientnet_b0': 'bn2', 'efficientnet_b3': 'bn2', 'mobilenetv2_100': 'bn2', 'pvt_v2_b2_li': 'stages[-1]'}
    assert BACKBONES.get('efficientnet_b3').input_size == 300 and BACKBONES.get('densenet121').input_size == 224
    assert all(BACKBONES.get(k).timm_name == k for k in SEEDS)


def test_aliases_and_unknown_name():
    assert BACKBONES.canonical('DenseNet-121') == BACKBONES.canonical('chexnet') == 'densenet121'
    assert BACKBONES.canonical('efficientnet-b3') == 'efficientnet_b3'
    assert BACKBONES.canonical('PVT') == 'pvt_v2_b2_li'
    assert create_model('mobilenet-v2', 2).cxr_backbone == 'mobilenetv2_100'
    with pytest.raises(ValueError, match='known: densenet121') as e: create_model('inception_v3', 14)
    assert type(e.value) is ValueError  # a bad argument, not bad data (CXRDataError)


def test_register_backbone_for_a_new_timm_model():
    class Tiny(nn.Module):
        def __init__(self, num_classes=1000, in_chans=3, drop_rate=0.0, **kw):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(in_chans, 4, 3, padding=1), nn.ReLU())
            self.head = nn.Linear(4, num_classes)
        def forward(self, x): return self.head(self.features(x).mean((2, 3)))

    def _test_tiny_backbone(pretrained=False, **kwargs): return Tiny(**kwargs)
    timm.models.register_model(_test_tiny_backbone)
    try:
        spec = register_backbone('_test_tiny_backbone', 'features[0]', input_size=32, aliases=['test-tiny'])
        assert BACKBONES.get('TEST_TINY') is spec and spec.timm_name == '_test_tiny_backbone'
        m = create_model('test-tiny', 3)
        assert isinstance(m, Tiny) and m.cxr_backbone == '_test_tiny_backbone' and target_layer(m) is m.features[0]
        assert tuple(m(torch.rand(2, 3, 32, 32)).shape) == (2, 3)
    finally:  # keep the global registries as the other tests expect them
        if '_test_tiny_backbone' in BACKBONES: BACKBONES.unregister('_test_tiny_backbone')
    with pytest.raises(ValueError, match='register_model'): register_backbone('no_such_timm_model', 'layer4')


def test_bad_arguments():
    with pytest.raises(ValueError, match='on_missing_weights'): create_model('resnet50', 14, on_missing_weights='ignore')
    with pytest.raises(ValueError, match='num_classes'): create_model('resnet50', 0)
    m = create_model('mobilenetv2_100', 3)
    with pytest.raises(ValueError, match="'nope'"): target_layer(m, 'blocks.nope')
    with pytest.raises(ValueError, match='cxr_backbone'): target_layer(nn.Sequential(nn.Conv2d(1, 1, 1)))
    seq = nn.Sequential(nn.Conv2d(1, 1, 1), nn.ReLU())
    assert target_layer(seq, '[-1]') is seq[1] and target_layer(seq, '0') is seq[0]
    assert target_layer(m) is m.bn2 and target_layer(m, 'blocks[-1][0]') is m.blocks[-1][0]


def test_in_chans_and_drop_rate():
    m = create_model('mobilenetv2_100', 2, in_chans=1, drop_rate=0.3)
    assert m.conv_stem.in_channels == 1 and m.drop_rate == pytest.approx(0.3)


def test_local_weights_round_trip_with_new_head(tmp_path):
    src = create_model('mobilenetv2_100', 1000)
    p = tmp_path / 'ckpt.pth'
    torch.save({'state_dict': {'module.' + k: v for k, v in src.state_dict().items()}}, p)  # DataParallel-style checkpoint
    m = create_model('mobilenet-v2', 14, pretrained=True, weights=p)
    assert m.pretrained_loaded and m.pretrained_source == str(p)
    sd, own = src.state_dict(), m.state_dict()
    assert all(torch.equal(own[k], sd[k]) for k in own if not k.startswith('classifier.'))  # every backbone tensor loaded
    assert m.classifier.out_features == 14
    g = create_model('mobilenetv2_100', 14, weights=p, in_chans=1)  # RGB stem adapted to grayscale (timm sums the filters)
    assert g.pretrained_loaded and torch.allclose(g.conv_stem.weight, src.conv_stem.weight.sum(1, keepdim=True))
    s = tmp_path / 'ckpt.safetensors'
    from safetensors.torch import save_file
    save_file(src.state_dict(), str(s))
    assert create_model('mobilenetv2_100', 14, weights=s).pretrained_source == str(s)


def test_bad_weights_file_raises_or_warns(tmp_path):
    with pytest.raises(PretrainedWeightsUnavailable, match='missing.pth does not exist'):
        create_model('mobilenetv2_100', 14, weights=tmp_path / 'missing.pth')
    p = tmp_path / 'other_arch.pth'
    torch.save(create_model('efficientnet_b0', 14).state_dict(), p)
    with pytest.raises(PretrainedWeightsUnavailable, match='other_arch.pth'):
        create_model('mobilenetv2_100', 14, weights=p)
    q = tmp_path / 'junk.pth'; torch.save([1, 2, 3], q)
    with pytest.raises(PretrainedWeightsUnavailable, match='junk.pth'):
        create_model('mobilenetv2_100', 14, weights=q)
    r = tmp_path / 'lightning.pth'  # every key prefixed 'model.': timm would load nothing (non-strict) and say only a warning
    torch.save({'model.' + k: v for k, v in create_model('mobilenetv2_100', 14).state_dict().items()}, r)
    with pytest.raises(PretrainedWeightsUnavailable, match='lightning.pth.*Unexpected keys'):
        create_model('mobilenetv2_100', 14, weights=r)
    with pytest.warns(PretrainedWeightsWarning, match='junk.pth'):
        m = create_model('mobilenetv2_100', 14, weights=q, on_missing_weights='warn')
    assert m.pretrained_loaded is False


def test_offline_pretrained_raises_fast(offline):
    t = time.perf_counter()
    with pytest.raises(PretrainedWeightsUnavailable, match='NOT loaded.*offline'):
        create_model('mobilenetv2_100', 14, pretrained=True)
    assert time.perf_counter() - t < 3  # ~0.1 s here vs ~45 s of hub retries without the probe


def test_hf_hub_offline_opens_no_socket(monkeypatch, no_sockets):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    assert hub_offline()
    t = time.perf_counter()
    with pytest.raises(PretrainedWeightsUnavailable, match='HF_HUB_OFFLINE is set'):
        create_model('mobilenetv2_100', 14, pretrained=True)
    assert time.perf_counter() - t < 3 and no_sockets == []


def test_offline_pretrained_warn_flags_and_prints(offline, capsys):
    with pytest.warns(PretrainedWeightsWarning, match='NOT loaded'):
        m = create_model('mobilenetv2_100', 14, pretrained=True, on_missing_weights='warn')
    assert m.pretrained_loaded is False and m.pretrained_source is None
    assert '!!! ImageNet weights NOT loaded: training mobilenetv2_100 from scratch !!!' in capsys.readouterr().out


def test_offline_loads_weights_already_in_the_hf_cache(tmp_path, monkeypatch, no_sockets):
    "HF_HUB_OFFLINE + weights in the local Hugging Face cache: loaded from the cache, still without a socket."
    from huggingface_hub import constants
    from safetensors.torch import save_file
    src = create_model('mobilenetv2_100', 1000)
    repo = tmp_path / 'models--timm--mobilenetv2_100.ra_in1k'  # the hub cache layout: refs/main -> snapshots/<sha>/file
    (repo / 'refs').mkdir(parents=True); (repo / 'refs' / 'main').write_text('abc123')
    (repo / 'snapshots' / 'abc123').mkdir(parents=True)
    save_file(src.state_dict(), str(repo / 'snapshots' / 'abc123' / 'model.safetensors'))
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(tmp_path))
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    m = create_model('mobilenetv2_100', 14, pretrained=True)
    assert m.pretrained_loaded and m.pretrained_source.endswith('snapshots/abc123/model.safetensors')
    assert torch.equal(m.conv_stem.weight, src.conv_stem.weight) and no_sockets == []


def test_what_was_loaded_is_recorded_with_its_checksum(tmp_path, monkeypatch, no_sockets):
    """Issue 22: offline runs said pretrained=True while training from scratch. Each model records what it actually
    started from (source and SHA-256 of the file, or none), every call lands in WEIGHTS_LOG, in order."""
    import hashlib
    from cxr_notebooks.models.backbones import WEIGHTS_LOG, LoadedWeights, weights_summary
    from huggingface_hub import constants
    src = create_model('mobilenetv2_100', 1000)
    p = tmp_path / 'ckpt.pth'; torch.save(src.state_dict(), p)
    n = len(WEIGHTS_LOG)
    local = create_model('mobilenetv2_100', 14, weights=p)
    assert local.pretrained_weights == LoadedWeights('mobilenetv2_100', str(p), hashlib.sha256(p.read_bytes()).hexdigest(), True)
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(tmp_path / 'empty_cache')); monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    with pytest.warns(PretrainedWeightsWarning, match=r"-p weights PATH.*-p pretrained false"):
        asked = create_model('mobilenetv2_100', 14, pretrained=True, on_missing_weights='warn')
    scratch = create_model('mobilenetv2_100', 14)
    assert WEIGHTS_LOG[n:] == [local.pretrained_weights, asked.pretrained_weights, scratch.pretrained_weights]
    assert str(asked.pretrained_weights) == 'none: from scratch (ImageNet weights asked for, not loaded)'
    assert str(scratch.pretrained_weights) == 'none: from scratch' and weights_summary([scratch.pretrained_weights] * 2) == 'none: from scratch'
    assert str(local.pretrained_weights) == f"{p} (sha256 {local.pretrained_weights.sha256[:12]})"
    assert weights_summary(WEIGHTS_LOG[n:n + 1]) == str(local.pretrained_weights) and weights_summary([]) is None
    with pytest.raises(PretrainedWeightsUnavailable, match='on purpose with pretrained=False'):
        create_model('mobilenetv2_100', 14, pretrained=True)
    n = len(WEIGHTS_LOG)
    measured = create_model('mobilenetv2_100', 14, log=False)   # built only to count FLOPs: not what a run trained
    assert len(WEIGHTS_LOG) == n and str(measured.pretrained_weights) == 'none: from scratch'
