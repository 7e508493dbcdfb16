"Seed 003's spatial attention models (cxr_notebooks.models.spatial_attention): hooks, timm registration, weights, overhead, benchmark."
import copy, io, json, subprocess, sys
from pathlib import Path
import pytest
import timm
import torch
from cxr_notebooks.explain.cams import compute_cam
from cxr_notebooks.models.backbones import create_model, target_layer
from cxr_notebooks.models.spatial_attention import SA_BACKBONES, add_spatial_attention, attention_overhead

STAGES = {'resnet101': ('layer2', 'layer3', 'layer4'), 'efficientnet_b0': ('blocks.2', 'blocks.4', 'blocks.6'),
          'efficientnet_b3': ('blocks.2', 'blocks.4', 'blocks.6'), 'mobilenetv2_100': ('blocks.2', 'blocks.4', 'blocks.6')}
X = torch.randn(2, 3, 64, 64)


def _gate_open(model, value=1e4):
    "Force every attention gate to sigmoid(value) (1 for a large value: the attention passes features through)."
    with torch.no_grad():
        for a in model.spatial_attn.values(): a.conv.bn.bias.fill_(value)


@pytest.mark.parametrize('backbone', SA_BACKBONES)
def test_registered_in_timm_and_create_model(backbone):
    "All four `_sa` names build through timm and create_model, gate the documented stages, and their CAM layer resolves."
    assert timm.is_model(f'{backbone}_sa')
    m = create_model(f'{backbone}_sa', num_classes=13, pretrained=False).eval()
    assert m.spatial_attn_stages == STAGES[backbone] and m.cxr_backbone == f'{backbone}_sa'
    assert sum(p.numel() for p in m.spatial_attn.parameters()) == 3 * (2 * 7 * 7 + 2)
    with torch.no_grad(): assert m(X).shape == (2, 13)
    assert isinstance(target_layer(m), torch.nn.Module)
    cfg, plain_cfg = timm.models.get_pretrained_cfg(f'{backbone}_sa'), timm.models.get_pretrained_cfg(backbone)
    assert cfg.hf_hub_id == plain_cfg.hf_hub_id   # the plain ImageNet weights, found in the offline cache under the same id


def test_attention_with_open_gates_is_the_plain_model():
    "The hook gates the stage output: with every gate at 1 the `_sa` model computes the plain model's logits."
    torch.manual_seed(0); plain = timm.create_model('resnet101', num_classes=13).eval()
    sa = add_spatial_attention(copy.deepcopy(plain)).eval()
    with torch.no_grad():
        y0 = plain(X)
        assert not torch.allclose(sa(X), y0)
        _gate_open(sa); torch.testing.assert_close(sa(X), y0)


def test_deepcopy_and_pickle_keep_their_own_attention():
    "Defect guard: a closure hook would make a deep copy (train_stages keeps deep copies) call the original's attention."
    m = create_model('mobilenetv2_100_sa', 13).eval()
    _gate_open(m)
    with torch.no_grad(): ref = m(X)
    twin = copy.deepcopy(m); _gate_open(twin, -1e4)   # the copy's gates closed: its output must change, the original's not
    buf = io.BytesIO(); torch.save(m, buf); buf.seek(0)
    loaded = torch.load(buf, weights_only=False).eval()
    with torch.no_grad():
        torch.testing.assert_close(m(X), ref)
        assert not torch.allclose(twin(X), ref)
        torch.testing.assert_close(loaded(X), ref)
        _gate_open(loaded, -1e4); torch.testing.assert_close(m(X), ref)


def test_attention_parameters_receive_gradients():
    "The gated map is on the loss path: one backward gives every attention convolution a non-zero gradient."
    m = create_model('efficientnet_b0_sa', 13).train()
    torch.nn.functional.binary_cross_entropy_with_logits(m(X), torch.zeros(2, 13)).backward()
    for name, a in m.spatial_attn.items():
        assert a.conv.conv.weight.grad is not None and a.conv.conv.weight.grad.abs().sum() > 0, name


@pytest.mark.parametrize('backbone', ['mobilenetv2_100', 'resnet101'])
def test_plain_weights_load_with_only_attention_missing(backbone):
    "A random state dict of the plain model (standing in for ImageNet) loads into `_sa`: nothing unexpected, only attention missing."
    plain_sd = timm.create_model(backbone, num_classes=13).state_dict()
    sa = create_model(f'{backbone}_sa', 13)
    missing, unexpected = sa.load_state_dict(plain_sd, strict=False)
    assert unexpected == []
    assert sorted(missing) == sorted(k for k in sa.state_dict() if k.startswith('spatial_attn.') and 'num_batches_tracked' not in k)
    assert all(torch.equal(sa.state_dict()[k], v) for k, v in plain_sd.items())


def test_weights_file_of_the_plain_backbone_loads_through_create_model(tmp_path):
    "The notebooks' path: `create_model('<b>_sa', weights=plain ImageNet file)` loads every plain tensor (head replaced)."
    plain_sd = timm.create_model('mobilenetv2_100').state_dict()   # 1000-class head, like the real checkpoint
    f = tmp_path / 'mobilenetv2_100.pth'; torch.save(plain_sd, f)
    m = create_model('mobilenetv2_100_sa', 13, weights=f)
    assert m.pretrained_loaded and m.pretrained_source == str(f)
    sd = m.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in plain_sd.items() if not k.startswith('classifier'))
    assert sd['classifier.weight'].shape == (13, 1280)


def test_pair_starts_from_the_same_plain_weights():
    "Seeded alike, `<b>` and `<b>_sa` share their plain initial weights (the ablation differs only by the attention)."
    torch.manual_seed(3); a = create_model('mobilenetv2_100', 13).state_dict()
    torch.manual_seed(3); b = create_model('mobilenetv2_100_sa', 13).state_dict()
    assert all(torch.equal(b[k], v) for k, v in a.items())


def test_add_spatial_attention_refuses_bad_arguments():
    m = timm.create_model('resnet18')
    with pytest.raises(ValueError, match='feature stages'): add_spatial_attention(m, stages=(9,))
    with pytest.raises(ValueError, match='odd'): add_spatial_attention(m, kernel_size=4)
    add_spatial_attention(m, stages=(-1,))
    assert m.spatial_attn_stages == ('layer4',)
    with pytest.raises(ValueError, match='already has'): add_spatial_attention(m)
    with pytest.raises(ValueError, match='feature_info'): add_spatial_attention(torch.nn.Linear(2, 2))


def test_kernel_and_stages_are_model_arguments():
    m = create_model('resnet101_sa', 13, sa_stages=(3,), sa_kernel_size=3)
    assert m.spatial_attn_stages == ('layer3',) and m.spatial_attn.layer3.conv.conv.kernel_size == (3, 3)


def test_cam_on_attention_models():
    "Grad-CAM works on the registered layers (ResNet-101: the last gated map)."
    for name in ('resnet101_sa', 'mobilenetv2_100_sa'):
        m = create_model(name, 13).eval()
        cam = compute_cam(m, X[:1], 2, backbone=name)
        assert cam.shape == (1, 64, 64) and 0 <= cam.min() and cam.max() <= 1


def test_attention_overhead_table():
    t = attention_overhead(['mobilenetv2_100', 'efficientnet_b0'], image_size=64)
    assert list(t.index) == ['mobilenetv2_100', 'efficientnet_b0']
    assert (t['params_added'] == 300).all() and (t['params_sa'] - t['params'] == 300).all()
    assert (t['gflop_sa'] > t['gflop']).all() and (t['flop_pct'] > 0).all() and (t['flop_pct'] < 1).all()
    # the gated maps at 64 px: 32 x 8 x 8, 96 x 4 x 4 and 320 x 2 x 2 for MobileNetV2; 3 elementwise ops per value
    assert t.loc['mobilenetv2_100', 'attn_elementwise_mflop'] == pytest.approx(3 * (32 * 64 + 96 * 16 + 320 * 4) / 1e6)


@pytest.mark.slow
def test_bench_attention_tiny_cpu(tmp_path):
    "The benchmark runs on the CPU at tiny settings and prints/writes the ratio table (speed is never asserted)."
    out = tmp_path / 'bench.json'
    bench = Path(__file__).resolve().parents[1] / 'benchmarks' / 'bench_attention.py'
    r = subprocess.run([sys.executable, str(bench), '--device', 'cpu', '--size', '32', '--batch-size', '2', '--steps', '2',
                        '--warmup', '1', '--amp', '--models', 'mobilenetv2_100', '--json', str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert 'ratio' in r.stdout and 'mobilenetv2_100' in r.stdout
    rows = json.loads(out.read_text())['rows']
    assert [x['backbone'] for x in rows] == ['mobilenetv2_100'] and rows[0]['precision'] == 'fp32 (AMP n/a on CPU)'
    assert rows[0]['plain_img_s'] > 0 and rows[0]['sa_img_s'] > 0
    assert rows[0]['ratio'] == pytest.approx(rows[0]['sa_img_s'] / rows[0]['plain_img_s'])


@pytest.mark.slow
def test_train_stages_builds_the_backbone_with_model_kw(tmp_path, sample_table):
    "`train_stages(model_kw=...)` reaches timm: a 3x3 attention kernel trains through the ordinary stages (one tiny epoch)."
    from cxr_notebooks.data.splits import patient_train_val_split
    from cxr_notebooks.train.stages import Stage, train_stages
    parts = patient_train_val_split(sample_table.head(48), val_fraction=0.5, seed=0)
    labels = ['Infiltration', 'Effusion']
    res = train_stages(parts['train'], parts['val'], [Stage(32, 8, 1)], torch.nn.BCEWithLogitsLoss(), tmp_path, 'mobilenetv2_100_sa',
                       labels, model_kw={'sa_kernel_size': 3}, num_workers=0, progress=False, device='cpu')
    kernels = {a.conv.conv.kernel_size for a in res.stage_models[0].spatial_attn.values()}
    assert kernels == {(3, 3)} and len(res.history) == 1
