"""Seed 004's networks (models.data_efficient): shapes, timm/backbone registration and CAM layers, parameter counts
against the report, the memory bank's FIFO order, the ensemble's mean-probability identity."""
import pytest
import timm
import torch
from cxr_notebooks.data.labels import NIH_LABELS
from cxr_notebooks.explain.cams import compute_cam
from cxr_notebooks.models.backbones import BACKBONES, create_model, target_layer
from cxr_notebooks.models.data_efficient import (REPORT_RARE_LABELS, AdvancedResNet, ChestXrayAttentionNet, FeatureMemory,
                                                 ProbabilityEnsemble, RareDiseaseNet, trainable_parameters)

NAMES = ('advanced_resnet50', 'chest_xray_attention_net', 'rare_disease_net')
REPORT_ADVANCED_RESNET_PARAMETERS = 28_085_194   # seed 004 §4.2.1
ADVANCED_RESNET_PARAMETERS = 27_563_486          # what models.data_efficient builds: 521,708 (1.9 %) fewer, a stated gap


@pytest.mark.parametrize('name', NAMES)
def test_registered_models_build_predict_and_have_a_cam_layer(name):
    assert timm.is_model(name) and name in BACKBONES
    m = create_model(name, 14).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(): y = m(x)
    assert y.shape == (2, 14) and torch.isfinite(y).all()
    cams = compute_cam(m, x[:1], 3)
    assert cams.shape[-2:] == (64, 64) and target_layer(m) is not None


def test_parameter_counts_printed_next_to_the_report(capsys):
    "The report gives 28,085,194 for the Advanced ResNet only; ours is exactly 27,563,486 (1.9 % fewer), printed beside it."
    counts = {n: trainable_parameters(create_model(n, 14)) for n in NAMES}
    for n, c in counts.items():
        print(f"{n}: {c:,d} (report: {REPORT_ADVANCED_RESNET_PARAMETERS:,d})" if n == 'advanced_resnet50' else f"{n}: {c:,d} (report: not given)")
    assert counts['advanced_resnet50'] == ADVANCED_RESNET_PARAMETERS
    assert round(100 * (REPORT_ADVANCED_RESNET_PARAMETERS - ADVANCED_RESNET_PARAMETERS) / REPORT_ADVANCED_RESNET_PARAMETERS, 1) == 1.9
    assert counts['chest_xray_attention_net'] < counts['rare_disease_net'] < counts['advanced_resnet50']
    assert '28,085,194' in capsys.readouterr().out
    frozen = create_model('chest_xray_attention_net', 14)
    for p in frozen.backbone.parameters(): p.requires_grad_(False)
    assert trainable_parameters(frozen) < counts['chest_xray_attention_net']


def test_small_variants_output_shapes():
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert AdvancedResNet(5, backbone='resnet18', fpn_channels=16).eval()(x).shape == (3, 5)
        assert ChestXrayAttentionNet(5).eval()(x).shape == (3, 5)
        out = RareDiseaseNet(5, rare_classes=[2], backbone='resnet18').eval()(x, return_features=True)
    assert out['logits'].shape == (3, 5) and out['rare_features'].shape == (3, 128 + 256 + 512)


def test_memory_bank_is_fifo_per_class():
    mem = FeatureMemory(2, size=3, dim=2)
    f = torch.arange(10.).repeat(2, 1).T          # row i = (i, i)
    t = torch.tensor([[1, 0]] * 5 + [[0, 1]] * 3 + [[1, 1]] * 2)
    mem.push(f[:4], t[:4])                         # class 0: 0, 1, 2 then 3 overwrites 0
    assert sorted(mem.features[0, :, 0].tolist()) == [1., 2., 3.] and mem.writes.tolist() == [4, 0]
    mem.push(f[4:], t[4:])                         # class 0: 4, 8, 9 in order -> oldest (1, 2, 3) go first
    assert sorted(mem.features[0, :, 0].tolist()) == [4., 8., 9.]
    assert sorted(mem.features[1, :, 0].tolist()) == [7., 8., 9.]   # class 1: 5, 6, 7, 8, 9 -> the last three
    assert mem.writes.tolist() == [7, 5] and mem.filled().tolist() == [3, 3]
    feats, targets = mem.stored()
    assert feats.shape == (6, 2) and targets.shape == (6, 2)
    assert targets[feats[:, 0] == 9].tolist() == [[1., 1.], [1., 1.]]   # stored under both classes, with both labels
    big = FeatureMemory(1, size=2, dim=1)
    big.push(torch.arange(5.)[:, None], torch.ones(5, 1))            # more rows than slots in one push: the last two stay
    assert sorted(big.features[0, :, 0].tolist()) == [3., 4.] and big.writes.tolist() == [5]
    big.push(torch.tensor([[9.]]), torch.ones(1, 1))                 # the ring continues: 3 (older) goes, 4 stays
    assert sorted(big.features[0, :, 0].tolist()) == [4., 9.]


def test_memory_bank_travels_in_the_state_dict():
    a = RareDiseaseNet(4, rare_classes=[1], backbone='resnet18', memory_size=2)
    a.remember(torch.randn(3, a.memory.features.shape[-1]), torch.tensor([[0, 1, 0, 0], [0, 0, 1, 0], [0, 1, 1, 0.]]))
    b = RareDiseaseNet(4, rare_classes=[1], backbone='resnet18', memory_size=2)
    b.load_state_dict(a.state_dict())
    assert torch.equal(b.memory.features, a.memory.features) and b.memory.writes.tolist() == [2]
    assert torch.allclose(b.replay_loss(), a.replay_loss())


def test_rare_classes_argument_and_default():
    m = RareDiseaseNet(14, backbone='resnet18')
    assert m.rare_classes == sorted(NIH_LABELS.index(l) for l in REPORT_RARE_LABELS)
    assert sorted(m.rare_classes + m.common_classes) == list(range(14))
    assert m.rare_head.out_features == 3 and m.common_head.out_features == 11
    assert create_model('rare_disease_net', 14, rare_classes=[0, 13]).rare_classes == [0, 13]
    with pytest.raises(ValueError, match='rare_classes'): RareDiseaseNet(5, backbone='resnet18')
    with pytest.raises(ValueError, match='rare_classes'): RareDiseaseNet(5, rare_classes=[5], backbone='resnet18')
    with pytest.raises(ValueError, match='rare_classes'): RareDiseaseNet(2, rare_classes=[0, 1], backbone='resnet18')


def test_replay_loss_trains_only_the_rare_head():
    m = RareDiseaseNet(4, rare_classes=[3], backbone='resnet18')
    assert m.replay_loss().item() == 0
    m.remember(torch.randn(2, m.memory.features.shape[-1]), torch.tensor([[0, 0, 0, 1], [1, 0, 0, 1.]]))
    m.replay_loss().backward()
    assert m.rare_head.weight.grad.abs().sum() > 0
    assert m.common_head.weight.grad is None and all(p.grad is None for p in m.backbone.parameters())


def test_ensemble_returns_the_logit_of_the_mean_probability():
    torch.manual_seed(0)
    members = [AdvancedResNet(3, backbone='resnet18', fpn_channels=8), ChestXrayAttentionNet(3),
               RareDiseaseNet(3, rare_classes=[1], backbone='resnet18')]
    ens = ProbabilityEnsemble(members).eval()
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        probs = torch.stack([m.eval()(x).sigmoid() for m in members])
        out = ens(x)
    assert torch.allclose(out.sigmoid(), probs.mean(0), atol=1e-5)


class _Constant(torch.nn.Module):
    "A stand-in member whose logits are fixed."
    def __init__(self, logits): super().__init__(); self.register_buffer('logits', torch.tensor(logits))
    def forward(self, x): return self.logits.expand(len(x), -1)


def test_ensemble_averages_probabilities_not_logits():
    ens = ProbabilityEnsemble([_Constant([4.0, -6.0]), _Constant([-1.0, 0.0])])
    out = ens(torch.zeros(2, 3, 8, 8))
    p = (torch.sigmoid(torch.tensor([4.0, -6.0])) + torch.sigmoid(torch.tensor([-1.0, 0.0]))) / 2
    assert torch.allclose(out.sigmoid(), p.expand(2, -1), atol=1e-6)
    assert abs(out[0, 0].item() - 1.5) > 0.5        # the mean logit would be 1.5; the mean probability's logit is ~0.51
    assert torch.isfinite(ProbabilityEnsemble([_Constant([100.0])])(torch.zeros(1, 1))).all()   # clamped: finite at p = 1
    with pytest.raises(ValueError): ProbabilityEnsemble([])


@pytest.mark.slow
def test_bench_seed004_tiny_cpu(tmp_path):
    "`bench_attention.py --seed004` times the three networks and their ensemble against a plain ResNet-50 (speed never asserted)."
    import json, subprocess, sys
    from pathlib import Path
    out = tmp_path / 'bench.json'
    bench = Path(__file__).resolve().parents[1] / 'benchmarks' / 'bench_attention.py'
    r = subprocess.run([sys.executable, str(bench), '--seed004', '--device', 'cpu', '--size', '32', '--batch-size', '2',
                        '--steps', '1', '--warmup', '1', '--json', str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    rows = {x['model']: x for x in json.loads(out.read_text())['rows']}
    assert list(rows)[:3] == ['advanced_resnet50', 'chest_xray_attention_net', 'rare_disease_net']
    ens = rows['ensemble (the three trained one after another)']
    assert ens['img_s'] == pytest.approx(1 / sum(1 / rows[n]['img_s'] for n in list(rows)[:3]))
    assert all(x['ratio'] == pytest.approx(x['img_s'] / x['resnet50_img_s']) for x in rows.values())
