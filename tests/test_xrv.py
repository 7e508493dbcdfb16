"""cxr_notebooks.models.xrv (torchxrayvision behind our interface) and the CheXpert reader on the real CheXpert
train metadata that the torchxrayvision wheel ships. torchxrayvision is the optional extra `xrv`: these tests
fail with the install command where it is missing (CI installs it)."""
import math, sys, time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cxr_notebooks.data.labels import CHEXPERT_COMPETITION_LABELS, NIH_LABELS
from cxr_notebooks.models import xrv as X
from cxr_notebooks.models.backbones import PretrainedWeightsUnavailable


@pytest.fixture(scope='module')
def xrv():
    try: return X.import_xrv()
    except ImportError: pytest.fail(f"torchxrayvision is missing; install the extra: {X.XRV_INSTALL_HINT}")


def test_package_imports_without_torchxrayvision(monkeypatch):
    monkeypatch.setitem(sys.modules, 'torchxrayvision', None)     # as if not installed
    with pytest.raises(ImportError, match=r"pip install torchxrayvision"): X.import_xrv()
    with pytest.raises(ImportError, match=r"pip install torchxrayvision"): X.xrv_classifier(None)


def test_import_keeps_warnings_audible(xrv):
    import warnings
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter('default')
        X.import_xrv(); warnings.warn('heard', UserWarning)
    assert [str(w.message) for w in seen] == ['heard']


def test_input_conversion_matches_hand_computation():
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    g = np.array([0.0, 0.25, 1.0])                                    # three constant grey images
    x = torch.tensor((g[:, None] - mean) / std, dtype=torch.float32)[:, :, None, None].expand(3, 3, 40, 70)
    out = X.to_xrv_input(x, resolution=32)
    assert out.shape == (3, 1, 32, 32)
    torch.testing.assert_close(out.amin((1, 2, 3)), torch.tensor((2 * g - 1) * 1024, dtype=torch.float32), atol=0.05, rtol=0)
    torch.testing.assert_close(out.amax((1, 2, 3)), out.amin((1, 2, 3)))
    left_half = torch.zeros(1, 3, 20, 60); left_half[..., :30] = 1    # non-square: the centre 20x20 is cropped
    assert X.to_xrv_input(left_half, 20)[0, 0].shape == (20, 20)


def test_outputs_follow_our_label_order(xrv):
    torch.manual_seed(0)
    raw = xrv.models.DenseNet(weights=None).eval()                    # no download
    labels = ['Hernia', 'Effusion', 'Atelectasis', 'Pleural_Thickening']
    model = X.XRVClassifier(raw, labels).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(): out, ref = model(x), raw(X.to_xrv_input(x))
    cols = [xrv.datasets.default_pathologies.index(l) for l in labels]
    assert cols == [13, 7, 0, 9]
    torch.testing.assert_close(out, ref[:, cols])
    assert X.xrv_classifier(None).labels == list(NIH_LABELS)


def test_pretrained_outputs_are_logits_not_calibrated_probabilities(xrv):
    raw = xrv.models.DenseNet(weights=None).eval()
    raw.op_threshs = torch.full((18,), 0.5)                          # as set by pretrained weights
    model = X.XRVClassifier(raw, NIH_LABELS).eval()
    with torch.no_grad(): out = model(torch.randn(1, 3, 224, 224))
    assert raw.op_threshs is None and raw.xrv_op_threshs is not None
    assert (out < 0).any() or (out > 1).any()                        # a logit range, not [0, 1]


def test_labels_it_lacks(xrv):
    raw = xrv.models.DenseNet(weights=None).eval()
    raw.pathologies = xrv.models.model_urls['densenet121-res224-chex']['labels']   # Hernia's slot is ''
    with pytest.raises(ValueError, match=r"no output for \['Hernia'\]"): X.XRVClassifier(raw, ['Edema', 'Hernia'])
    with torch.no_grad(): out = X.XRVClassifier(raw, ['Pleural Effusion', 'Hernia'], on_missing='nan')(torch.zeros(2, 3, 32, 32))
    assert torch.isfinite(out[:, 0]).all() and torch.isnan(out[:, 1]).all()
    with pytest.raises(ValueError, match="on_missing"): X.XRVClassifier(raw, ['Edema'], on_missing='zero')


def test_offline_fails_loudly_and_fast(xrv, tmp_path, monkeypatch):
    monkeypatch.setattr(X, '_host_reachable', lambda url, timeout=3.0: False)
    t = time.perf_counter()
    with pytest.raises(PretrainedWeightsUnavailable) as e: X.xrv_classifier('densenet121-res224-nih', cache_dir=tmp_path)
    assert time.perf_counter() - t < 2
    msg = str(e.value)
    url = xrv.models.model_urls['densenet121-res224-nih']['weights_url']
    assert "'densenet121-res224-nih'" in msg and url in msg and str(tmp_path / Path(url).name) in msg and 'cache_dir=' in msg
    with pytest.raises(ValueError, match='expected one of'): X.xrv_classifier('densenet121-nih')


def test_bad_local_weights_file_fails_loudly(xrv, tmp_path):
    file, _ = X.xrv_weights_file('densenet121-res224-nih', tmp_path)
    file.write_bytes(b'not a checkpoint')
    with pytest.raises(PretrainedWeightsUnavailable, match=r"could not be loaded"): X.xrv_classifier('densenet121-res224-nih', cache_dir=tmp_path)


# --- the CheXpert reader on the real train.csv (223,414 rows) shipped in the torchxrayvision wheel -------------
@pytest.fixture(scope='module')
def chexpert_csv(xrv):
    p = Path(xrv.__file__).parent / 'data' / 'chexpert_train.csv.gz'
    if not p.is_file(): pytest.fail(f"{p} is missing from the torchxrayvision wheel; reinstall it: {X.XRV_INSTALL_HINT}")
    return p


@pytest.fixture(scope='module')
def raw_frontal(chexpert_csv):
    df = pd.read_csv(chexpert_csv)
    assert len(df) == 223_414
    return df[df['Frontal/Lateral'] == 'Frontal']


# Positives per competition label among the 191,027 frontal images, and uncertain (-1) counts (U-Ignore -> NaN).
POSITIVE = {'Atelectasis': 29_720, 'Cardiomegaly': 23_385, 'Consolidation': 12_983, 'Edema': 49_675, 'Pleural Effusion': 76_899}
UNCERTAIN = {'Atelectasis': 29_863, 'Cardiomegaly': 6_707, 'Consolidation': 24_381, 'Edema': 11_818, 'Pleural Effusion': 9_578}


@pytest.mark.slow
@pytest.mark.parametrize('policy', ['U-Ones', 'U-Zeros', 'U-Ignore'])
def test_chexpert_reader_on_real_train_csv(chexpert_csv, raw_frontal, policy):
    from cxr_notebooks.data.chexpert import read_chexpert_csv
    t = read_chexpert_csv(chexpert_csv, uncertainty=policy)           # check_files=False: the images are not shipped
    assert len(t) == len(raw_frontal) == 191_027 and (t['view'] == 'frontal').all()
    assert t['patient_id'].nunique() == raw_frontal['Path'].str.extract(r'(patient\d+)')[0].nunique() == 64_534
    labs = list(CHEXPERT_COMPETITION_LABELS)
    assert list(t.columns[-5:]) == labs
    pos = {l: int((raw_frontal[l] == 1).sum()) for l in labs}
    unc = {l: int((raw_frontal[l] == -1).sum()) for l in labs}
    assert pos == POSITIVE and unc == UNCERTAIN                      # plain pandas agrees with the pinned literals
    got_pos = {l: int((t[l] == 1).sum()) for l in labs}
    got_nan = {l: int(t[l].isna().sum()) for l in labs}
    if policy == 'U-Ones': assert got_pos == {l: POSITIVE[l] + UNCERTAIN[l] for l in labs} and set(got_nan.values()) == {0}
    if policy == 'U-Zeros': assert got_pos == POSITIVE and set(got_nan.values()) == {0}
    if policy == 'U-Ignore': assert got_pos == POSITIVE and got_nan == UNCERTAIN
    assert set(np.unique(t[labs].to_numpy()[~np.isnan(t[labs].to_numpy())])) <= {0.0, 1.0}
    assert t['path'].iloc[0].endswith('CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg')


def test_cams_through_the_wrapper(xrv):
    from cxr_notebooks.explain.cams import compute_cam
    torch.manual_seed(0)
    model = X.xrv_classifier(None).eval()
    cams = compute_cam(model, torch.randn(2, 3, 48, 64), [2, 4], target_layer=model.xrv_model.features.norm5)
    assert cams.shape == (2, 48, 64) and cams.min() >= 0 and cams.max() <= 1 and cams.max() > 0.5


# --- the anatomical segmenter: torchxrayvision's ChestX-Det PSPNet as a lung segmenter --------------------------
class _Anatomy(torch.nn.Module):
    "A stand-in for the PSPNet: left lung in the left third, right lung in the right third, heart everywhere."
    targets = ['Left Clavicle', 'Right Clavicle', 'Left Scapula', 'Right Scapula', 'Left Lung', 'Right Lung', 'Left Hilus Pulmonis',
               'Right Hilus Pulmonis', 'Heart', 'Aorta', 'Facies Diaphragmatica', 'Mediastinum', 'Weasand', 'Spine']
    def forward(self, x):
        self.seen = (float(x.min()), float(x.max()))
        y = torch.full((len(x), 14, *x.shape[-2:]), -5.0); w = x.shape[-1] // 3
        y[:, 4, :, :w] = 5; y[:, 5, :, 2 * w:] = 5; y[:, 8] = 5
        return y


def test_lung_net_is_the_union_of_left_and_right_lung(xrv):
    assert _Anatomy.targets == xrv.baseline_models.chestx_det.PSPNet.targets
    net = X.XRVLungNet(_Anatomy())
    lungs = net(torch.linspace(-1, 1, 900).view(1, 1, 30, 30)) > 0
    assert lungs.shape == (1, 1, 30, 30) and lungs[..., :10].all() and lungs[..., 20:].all() and not lungs[..., 10:20].any()
    assert net.pspnet.seen == (-1024.0, 1024.0)                       # [-1, 1] in, torchxrayvision's range passed on


def test_pspnet_url_and_cache_file_are_torchxrayvision_s(xrv, tmp_path, monkeypatch):
    import inspect
    assert X.XRV_PSPNET_URL in inspect.getsource(xrv.baseline_models.chestx_det.PSPNet.__init__)
    monkeypatch.setenv('HOME', str(tmp_path))
    assert X.xrv_pspnet_file() == tmp_path / '.torchxrayvision' / 'models_data' / 'pspnet_chestxray_best_model_4.pth'
    assert X.xrv_pspnet_file(tmp_path / 'w') == tmp_path / 'w' / 'pspnet_chestxray_best_model_4.pth'


def test_xrv_segmenter_offline_fails_loudly_and_fast(xrv, tmp_path, monkeypatch):
    from cxr_notebooks.models.lungseg import lung_segmenter
    monkeypatch.setenv('HOME', str(tmp_path))
    monkeypatch.setattr(X, '_host_reachable', lambda url, timeout=3.0: False)
    t = time.perf_counter()
    with pytest.raises(PretrainedWeightsUnavailable) as e: lung_segmenter('xrv')
    assert time.perf_counter() - t < 2
    file = tmp_path / '.torchxrayvision' / 'models_data' / 'pspnet_chestxray_best_model_4.pth'
    msg = str(e.value)
    assert 'chestx_det.PSPNet' in msg and X.XRV_PSPNET_URL in msg and str(file) in msg and 'copy it to' in msg and 'cache_dir=' in msg
    assert not file.parent.exists()                                    # nothing was attempted
    monkeypatch.setattr(X, '_host_reachable', lambda url, timeout=3.0: pytest.fail('HF_HUB_OFFLINE: no socket'))
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    with pytest.raises(PretrainedWeightsUnavailable, match='HF_HUB_OFFLINE is set'): lung_segmenter('xrv', cache_dir=tmp_path / 'none')


def test_bad_pspnet_weights_file_fails_loudly(xrv, tmp_path):
    X.xrv_pspnet_file(tmp_path).write_bytes(b'not a checkpoint')
    with pytest.raises(PretrainedWeightsUnavailable, match=r"could not be loaded from .*pspnet_chestxray_best_model_4.pth"):
        X.xrv_lung_net(tmp_path)


@pytest.mark.slow
def test_xrv_segmenter_loads_the_pspnet_from_its_cache_and_combines_the_lungs(xrv, tmp_path, monkeypatch):
    "The success path without internet: the real PSPNet architecture, random weights saved as torchxrayvision's DataParallel file in a tmp HOME."
    from cxr_notebooks.models.lungseg import lung_segmenter
    from torchxrayvision.baseline_models.chestx_det.ptsemseg.pspnet import pspnet
    monkeypatch.setenv('HOME', str(tmp_path))
    monkeypatch.setattr(X, '_host_reachable', lambda url, timeout=3.0: pytest.fail('the file is there: no socket'))
    monkeypatch.setattr(xrv.utils, 'download', lambda *a: pytest.fail('the file is there: no download'))
    torch.manual_seed(0)
    net = pspnet(14)
    torch.nn.init.zeros_(net.classification.weight)                   # each map = its bias: the lung channels are ours to set
    file = X.xrv_pspnet_file(); file.parent.mkdir(parents=True)
    torch.save({f'module.{k}': v for k, v in net.state_dict().items()}, file)
    seg = lung_segmenter('xrv', device='cpu')
    assert seg.size == 512 and seg.identity.startswith('xrv:512px:') and seg.identity.endswith(f'torchxrayvision-{xrv.__version__}')
    img = (np.random.default_rng(0).random((1, 150, 130)) * 255).astype(np.uint8)
    bias = seg.net.pspnet.model.classification.bias
    targets = xrv.baseline_models.chestx_det.PSPNet.targets
    for lit, expected in ((['Left Lung'], 1), (['Right Lung'], 1), (['Heart', 'Spine'], 0)):
        with torch.no_grad(): bias.fill_(-4.0); bias[[targets.index(t) for t in lit]] = 4.0
        m = seg(img)
        assert m.shape == (1, 150, 130) and m.dtype == np.uint8 and (m == expected).all(), lit
