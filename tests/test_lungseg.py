"The embedded lung segmentation pairs, the shipped lung U-Net (held-out Dice pinned against a trivial baseline) and the lung box."
import numpy as np
import pytest
import torch
from cxr_notebooks.core import CXRDataError
from cxr_notebooks.data.lungseg import lungseg_split, lungseg_table
from cxr_notebooks.models.lungseg import load_lung_unet, lung_box, lung_unet, segment_lungs
from cxr_notebooks.train.segmentation import heldout_dice, mask_dice


def test_pairs_table_and_split():
    t = lungseg_table()
    assert len(t) == 199 and t['image'].is_unique and {'mask_path', 'license', 'url'} <= set(t.columns)
    parts = lungseg_split(t, seed=0)
    assert {k: len(v) for k, v in parts.items()} == {'train': 139, 'val': 19, 'test': 41}
    assert not set(parts['train']['image']) & (set(parts['val']['image']) | set(parts['test']['image']))


def test_shipped_unet_beats_the_mean_mask_on_held_out_films():
    "The shipped weights: held-out Dice recomputed here, pinned, and clearly above the fixed mean-mask baseline."
    net = load_lung_unet()
    info = net.lungseg_info
    assert info['size'] == 128 and info['split_sizes'] == {'train': 139, 'val': 19, 'test': 41}
    parts = lungseg_split(lungseg_table(), seed=info['seed'])
    d = heldout_dice(net, parts['test'], parts['train'])
    assert d['unet'].mean() == pytest.approx(info['test_dice_unet'], abs=2e-3)   # the recorded number is reproducible
    assert d['unet'].mean() > 0.9 and d['mean_mask'].mean() < 0.8
    assert d['unet'].mean() - d['mean_mask'].mean() > 0.1


def test_segment_lungs_returns_masks_at_input_size():
    net = load_lung_unet()
    img = (np.random.default_rng(0).random((2, 200, 180)) * 255).astype(np.uint8)
    m = segment_lungs(net, img)
    assert m.shape == (2, 200, 180) and m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1}
    assert segment_lungs(net, img[0]).shape == (200, 180)
    with pytest.raises(ValueError, match='expected uint8'): segment_lungs(net, img.astype(float))


def test_lung_box_and_errors(tmp_path):
    m = np.zeros((64, 64), np.uint8); m[10:50, 5:25] = 1; m[12:55, 35:60] = 1; m[1, 1] = 1
    assert lung_box(m) == (5, 10, 60, 55)
    with pytest.raises(CXRDataError, match='empty'): lung_box(np.zeros((8, 8), np.uint8))
    with pytest.raises(CXRDataError, match='no lung U-Net weights'): load_lung_unet(tmp_path / 'none.pt')
    torch.save({'model': {'x': torch.zeros(1)}}, tmp_path / 'bad.pt')
    with pytest.raises(CXRDataError, match='does not fit'): load_lung_unet(tmp_path / 'bad.pt')


def test_mask_dice_matches_hand_count():
    a = np.zeros((1, 4, 4), np.uint8); a[0, :2] = 1
    b = np.zeros((1, 4, 4), np.uint8); b[0, 1:3] = 1
    assert mask_dice(a, b)[0] == pytest.approx(2 * 4 / 16)


def test_segmenters_by_name_and_their_identity(tmp_path):
    "The registry's names, the U-Net segmenter = segment_lungs with the shipped net, and an identity that follows the weights file."
    from cxr_notebooks.models.lungseg import SEGMENTERS, lung_segmenter
    assert SEGMENTERS.names() == ['unet', 'xrv']
    seg = lung_segmenter()
    img = (np.random.default_rng(1).random((2, 70, 90)) * 255).astype(np.uint8)
    assert np.array_equal(seg(img), segment_lungs(load_lung_unet(), img))
    assert seg.identity.startswith('unet:128px:') and lung_segmenter('UNet').identity == seg.identity
    ck = torch.load(seg.weights, weights_only=True)
    ck['info'] = {**ck['info'], 'note': 'retrained'}                    # same network, another weights file
    torch.save(ck, tmp_path / 'other.pt')
    other = lung_segmenter('unet', weights=tmp_path / 'other.pt')
    assert other.identity != seg.identity and np.array_equal(other(img), seg(img))
    with pytest.raises(ValueError, match='known: unet, xrv'): lung_segmenter('sam')
