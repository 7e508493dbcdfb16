"Contract of cxr_notebooks.data.preprocess (seed 004 Sec. 3.4.1-3.4.2) and its use through ImageCache and CXRDataset."
import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from torchvision.transforms import v2
from cxr_notebooks.core import CXRDataError
from cxr_notebooks.data.cache import ImageCache
from cxr_notebooks.data.datasets import CXRDataset, read_image
from cxr_notebooks.data.nih import nih_sample_table
from cxr_notebooks.data.preprocess import (CLAHE, Bilateral, LungMask, PreprocessChain, Resize, seed004_augmentation,
                                           seed004_preprocess)


@pytest.fixture(scope='module')
def table():
    return nih_sample_table(256).iloc[:6].reset_index(drop=True)


@pytest.fixture(scope='module')
def img(table):
    return read_image(table.path[0])


def _half_mask(image: np.ndarray) -> np.ndarray:
    "A stand-in lung mask: the left half of the image."
    m = np.zeros(image.shape, bool); m[:, : image.shape[1] // 2] = True
    return m


def test_clahe_equals_opencv(img):
    for clip, tile in [(2.0, 8), (4.0, 4)]:
        ref = cv2.createCLAHE(clipLimit=clip, tileGridSize=(tile, tile)).apply(img)
        assert np.array_equal(CLAHE(clip, tile)(img), ref)
    assert np.array_equal(Bilateral(5, 30, 30)(img), cv2.bilateralFilter(img, 5, 30, 30))
    assert np.array_equal(Resize(64)(img), cv2.resize(img, (64, 64), interpolation=cv2.INTER_AREA))


def test_chain_order_and_output(img):
    chain = seed004_preprocess(64, bilateral=True)
    assert [type(s) for s in chain.steps] == [Bilateral, CLAHE, Resize]
    ref = cv2.resize(cv2.createCLAHE(2.0, (8, 8)).apply(cv2.bilateralFilter(img, 9, 75, 75)), (64, 64), interpolation=cv2.INTER_AREA)
    out = chain(img)
    assert out.dtype == np.uint8 and np.array_equal(out, ref) and chain.size == 64


def test_chain_is_deterministic(img):
    chain = seed004_preprocess(64, bilateral=True, lung_mask=_half_mask, lung_mask_name='left-half')
    assert np.array_equal(chain(img), chain(img.copy()))
    assert np.array_equal(seed004_preprocess(64)(img), seed004_preprocess(64)(img))


def test_keys_differ_per_chain_and_are_stable():
    chains = [seed004_preprocess(224), seed004_preprocess(224, bilateral=True), seed004_preprocess(224, clip_limit=3.0),
              seed004_preprocess(224, tile_grid=4), seed004_preprocess(128),
              seed004_preprocess(224, lung_mask=_half_mask, lung_mask_name='left-half'),
              seed004_preprocess(224, lung_mask=_half_mask, lung_mask_name='other-net')]
    keys = [c.key for c in chains]
    assert len(set(keys)) == len(keys)
    assert seed004_preprocess(224).key == seed004_preprocess(224).key == 'clahe(clip_limit=2.0, tile_grid=8) > resize(size=224)'
    assert 'lungmask(name=left-half' in keys[5]


def test_lung_mask_wrong_shape_names_expected(img):
    step = LungMask(lambda im: np.ones((10, 10), bool), 'bad')
    with pytest.raises(CXRDataError, match=r"expected a mask of shape \(256, 256\)"):
        step(img)
    chain = seed004_preprocess(64, lung_mask=lambda im: np.ones((10, 10), bool), lung_mask_name='bad')
    with pytest.raises(CXRDataError, match=r"'bad'.*\(10, 10\).*expected a mask of shape \(256, 256\)"):
        chain(img)


def test_lung_mask_zeroes_outside(img):
    out = seed004_preprocess(64, lung_mask=_half_mask, lung_mask_name='left-half', lung_mask_on='current')(img)
    assert (out[:, 32:] == 0).all() and out[:, :32].any()
    orig = seed004_preprocess(64, lung_mask=_half_mask, lung_mask_name='left-half')(img)   # mask of the stored image, resized
    assert (orig[:, 32:] == 0).all() and np.array_equal(orig[:, :32], seed004_preprocess(64)(img)[:, :32])


def test_bad_arguments(img):
    with pytest.raises(ValueError, match='lung_mask_name'):
        seed004_preprocess(64, lung_mask=_half_mask)
    with pytest.raises(ValueError, match='one Resize'):
        PreprocessChain(CLAHE())
    with pytest.raises(CXRDataError, match='uint8'):
        seed004_preprocess(64)(img.astype(np.float32))
    with pytest.raises(ValueError, match="on='both'"):
        LungMask(_half_mask, 'x', on='both')


def test_cache_has_one_file_per_chain(table, tmp_path):
    paths = table.path.tolist()
    a, b = seed004_preprocess(64), seed004_preprocess(64, bilateral=True)
    plain = ImageCache.build(paths, 64, tmp_path, progress=False)
    ca = ImageCache.build(paths, 64, tmp_path, progress=False, preprocess=a)
    cb = ImageCache.build(paths, 64, tmp_path, progress=False, preprocess=b)
    assert len({plain.index_path, ca.index_path, cb.index_path}) == 3
    assert plain.preprocess_key is None and ca.preprocess_key == a.key and cb.preprocess_key == b.key
    assert np.array_equal(ca[2], a(read_image(paths[2]))) and np.array_equal(plain[2], read_image(paths[2], 64))
    assert ImageCache.build(paths, 64, tmp_path, progress=False, preprocess=a).data_path == ca.data_path   # reused
    assert ImageCache.open(tmp_path, 64, paths, preprocess=b).data_path == cb.data_path
    with pytest.raises(ValueError, match='size 64'):
        ImageCache.build(paths, 32, tmp_path, progress=False, preprocess=a)
    with pytest.raises(ValueError, match='key'):
        ImageCache.build(paths, 64, tmp_path, progress=False, preprocess=lambda im: im)


def test_dataset_preprocess_direct_and_cached(table, tmp_path):
    chain = seed004_preprocess(64)
    direct = CXRDataset(table, ['Mass'], preprocess=chain)
    assert direct.image_size == 64
    cache = ImageCache.build(table.path.tolist(), 64, tmp_path, progress=False, preprocess=chain)
    cached = CXRDataset(table, ['Mass'], cache=cache, preprocess=chain)
    expected = torch.from_numpy(chain(read_image(table.path[1]))).float() / 255
    assert torch.equal(direct[1]['image'][0], expected) and torch.equal(cached[1]['image'], direct[1]['image'])
    with pytest.raises(CXRDataError, match='built with preprocess'):
        CXRDataset(table, ['Mass'], cache=cache, preprocess=seed004_preprocess(64, bilateral=True))
    with pytest.raises(CXRDataError, match='built with preprocess'):   # a key-less callable cannot match any cache
        CXRDataset(table, ['Mass'], cache=ImageCache.build(table.path.tolist(), 64, tmp_path, progress=False), preprocess=lambda im: chain(im))
    with pytest.raises(CXRDataError, match='image_size=32'):
        CXRDataset(table, ['Mass'], preprocess=chain, image_size=32)


def test_seed004_augmentation(table):
    aug = seed004_augmentation(64)
    names = [type(t).__name__ for t in aug.transforms]
    assert names[:4] == ['RandomResizedCrop', 'RandomHorizontalFlip', 'RandomRotation', 'ColorJitter']
    jitter = aug.transforms[3]
    assert jitter.saturation is None and jitter.hue is None and jitter.brightness is not None
    ds = CXRDataset(table, ['Mass'], preprocess=seed004_preprocess(64), transform=aug)
    torch.manual_seed(0)
    x = ds[0]['image']
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32 and x.min() < 0   # ImageNet-normalised


def test_plain_dataset_refuses_a_preprocessed_cache(table, tmp_path):
    "Issue 18: a dataset without preprocessing must not read CLAHE'd pixels as if they were plain ones."
    cache = ImageCache.build(table.path.tolist(), 64, tmp_path, progress=False, preprocess=seed004_preprocess(64))
    with pytest.raises(CXRDataError, match=r"built with preprocess 'clahe.* but this dataset's preprocess is None"):
        CXRDataset(table, ['Mass'], cache=cache)
