"""Contract tests for cxr_notebooks.data.datasets: decoding, the sample dict, transforms, collation, loaders."""
import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision.transforms import v2

from cxr_notebooks.core import CXRDataError
from cxr_notebooks.data.datasets import (CXRDataset, collate_cxr, default_transforms, make_dataloader, read_image,
                                    sample_dataset)
from cxr_notebooks.data.labels import NIH_LABELS


def _film(h=100, w=80):
    "A grayscale test image with a bright rectangle at rows 20:40, cols 10:30."
    img = np.full((h, w), 30, np.uint8); img[20:40, 10:30] = 220
    return img


@pytest.fixture
def table(tmp_path):
    for n, im in (('a.png', _film()), ('b.png', _film()[:, ::-1])):
        cv2.imwrite(str(tmp_path / n), im)
    cv2.imwrite(str(tmp_path / 'm.png'), np.where(_film() > 100, 255, 0).astype(np.uint8))
    return pd.DataFrame({'image': ['a.png', 'b.png'], 'path': [str(tmp_path / 'a.png'), str(tmp_path / 'b.png')],
                         'Effusion': np.array([1, np.nan], np.float32), 'Mass': np.array([0, 1], np.float32)})


BOXES = pd.DataFrame({'image': ['a.png', 'a.png'], 'label': ['Effusion', 'Hernia'],
                      'x_min': [10.0, 0], 'y_min': [20.0, 0], 'x_max': [30.0, 4], 'y_max': [40.0, 4]})


# read_image ---------------------------------------------------------------------------------------
def test_read_image_depths_and_colour(tmp_path):
    x = _film()
    cv2.imwrite(str(tmp_path / 'g.png'), x); cv2.imwrite(str(tmp_path / 'g.jpg'), x, [cv2.IMWRITE_JPEG_QUALITY, 100])
    cv2.imwrite(str(tmp_path / 'g16.png'), x.astype(np.uint16) * 257)
    cv2.imwrite(str(tmp_path / 'rgb.png'), np.stack([x] * 3, -1))
    cv2.imwrite(str(tmp_path / 'rgba.png'), np.dstack([x, x, x, np.full_like(x, 255)]))
    for n in ('g.png', 'g16.png', 'rgb.png', 'rgba.png'):
        y = read_image(tmp_path / n)
        assert y.dtype == np.uint8 and y.shape == (100, 80) and np.array_equal(y, x), n
    assert np.abs(read_image(tmp_path / 'g.jpg').astype(int) - x).max() <= 3


def test_read_image_resize_is_area(tmp_path):
    x = np.arange(64 * 64, dtype=np.uint8).reshape(64, 64)
    cv2.imwrite(str(tmp_path / 'x.png'), x)
    y = read_image(tmp_path / 'x.png', size=16)
    assert y.shape == (16, 16)
    assert np.array_equal(y, cv2.resize(x, (16, 16), interpolation=cv2.INTER_AREA))
    same = read_image(tmp_path / 'x.png', size=64)                 # already that size: the stored pixels
    assert same.dtype == np.uint8 and np.array_equal(same, x)


def test_read_image_errors_name_the_file(tmp_path):
    with pytest.raises(CXRDataError, match='missing.png: image file not found'):
        read_image(tmp_path / 'missing.png')
    (tmp_path / 'pointer.png').write_text('version https://git-lfs.github.com/spec/v1\n')
    with pytest.raises(CXRDataError, match='pointer.png: not a readable PNG/JPEG'):
        read_image(tmp_path / 'pointer.png')
    (tmp_path / 'empty.jpg').write_bytes(b'')
    with pytest.raises(CXRDataError, match='empty.jpg: not a readable PNG/JPEG'):
        read_image(tmp_path / 'empty.jpg')


# CXRDataset ---------------------------------------------------------------------------------------
def test_sample_contract(table):
    ds = CXRDataset(table, ['Effusion', 'Mass'])
    assert len(ds) == 2
    s = ds[1]
    assert set(s) == {'image', 'label', 'label_mask', 'index'}
    assert s['image'].shape == (3, 100, 80) and s['image'].dtype == torch.float32
    assert 0 <= s['image'].min() and s['image'].max() <= 1
    assert torch.equal(s['image'][0], s['image'][2])
    assert s['label'].tolist() == [0.0, 1.0] and s['label_mask'].tolist() == [0.0, 1.0] and s['index'] == 1
    assert CXRDataset(table, ['Mass'], channels=1)[0]['image'].shape == (1, 100, 80)


def test_boxes_rescaled_and_filtered(table):
    ds = CXRDataset(table, ['Effusion', 'Mass'], boxes=BOXES, image_size=50)
    s0, s1 = ds[0], ds[1]
    assert s0['image'].shape == (3, 50, 50)
    # stored 100 (h) x 80 (w) -> 50 x 50: x * 50/80, y * 50/100; the Hernia box is not one of the labels
    assert np.allclose(s0['boxes'].tolist(), [[6.25, 10.0, 18.75, 20.0]])
    assert s0['boxes'].canvas_size == (50, 50) and s0['box_labels'].tolist() == [0]
    assert s0['box_labels'].dtype == torch.int64
    assert s1['boxes'].shape == (0, 4) and s1['box_labels'].shape == (0,)


def test_mask_files_0_1_and_0_255(table, tmp_path):
    cv2.imwrite(str(tmp_path / 'm01.png'), (_film() > 100).astype(np.uint8))
    m01 = CXRDataset(table.assign(mask_path=str(tmp_path / 'm01.png')), ['Mass'])[0]['mask']
    m255 = CXRDataset(table.assign(mask_path=str(tmp_path / 'm.png')), ['Mass'])[0]['mask']
    assert torch.equal(m01, m255) and m01.sum() == 20 * 20


def test_mask_follows_image(table, tmp_path):
    t = table.assign(mask_path=str(tmp_path / 'm.png'))
    ds = CXRDataset(t, ['Mass'], boxes=BOXES, transform=v2.RandomHorizontalFlip(p=1.0))
    s = ds[0]
    assert s['mask'].shape == (1, 100, 80) and s['mask'].dtype == torch.uint8
    assert set(s['mask'].unique().tolist()) == {0, 1}
    # the image and the mask were flipped together: the bright rectangle is where the mask is 1
    assert torch.equal(s['mask'][0].bool(), s['image'][0] > 0.5)
    assert s['mask'][0, 20:40, 80 - 30:80 - 10].all()


def test_flip_moves_boxes(table):
    s = CXRDataset(table, ['Effusion'], boxes=BOXES, transform=v2.RandomHorizontalFlip(p=1.0))[0]
    assert s['boxes'].tolist() == [[50.0, 20.0, 70.0, 40.0]]   # x -> 80 - x
    x0, y0, x1, y1 = map(int, s['boxes'][0].tolist())
    assert (s['image'][0, y0:y1, x0:x1] > 0.8).all()


def test_boxes_cropped_away_are_dropped(table):
    crop = v2.Compose([v2.CenterCrop((20, 20))])   # keeps rows 40:60, cols 30:50: outside the box
    s = CXRDataset(table, ['Effusion'], boxes=BOXES, transform=crop)[0]
    assert s['boxes'].shape == (0, 4) and s['box_labels'].shape == (0,)


def test_construction_errors(table, tmp_path):
    with pytest.raises(CXRDataError, match=r"train.csv: label column\(s\) \['Hernia'\] not found"):
        CXRDataset(table, ['Mass', 'Hernia'], name='train.csv')
    with pytest.raises(CXRDataError, match=r"missing column\(s\) \['path'\]"):
        CXRDataset(table.drop(columns='path'), ['Mass'])
    with pytest.raises(CXRDataError, match=r"box table: missing column\(s\) \['x_max'\]"):
        CXRDataset(table, ['Mass'], boxes=BOXES.drop(columns='x_max'))
    with pytest.raises(CXRDataError, match='channels=2'):
        CXRDataset(table, ['Mass'], channels=2)
    with pytest.raises(CXRDataError, match=r'mask_path is empty in row\(s\) \[1\]'):
        CXRDataset(table.assign(mask_path=[str(tmp_path / 'm.png'), None]), ['Mass'])
    with pytest.raises(CXRDataError, match=r"label column 'Mass' row 1 holds -1.0; expected 1.0/0.0 or NaN"):
        CXRDataset(table.assign(Mass=[0.0, -1.0]), ['Mass'])
    with pytest.raises(CXRDataError, match=r"label column 'Mass' row 0 holds 'yes'"):
        CXRDataset(table.assign(Mass=['yes', '0']), ['Mass'])
    with pytest.raises(CXRDataError, match='expected a pandas DataFrame'):
        CXRDataset([1, 2], ['Mass'])


def test_missing_image_at_getitem_names_file(table):
    t = table.copy(); t.loc[1, 'path'] = '/nonexistent/zz.png'
    ds = CXRDataset(t, ['Mass'])
    with pytest.raises(CXRDataError, match='zz.png: image file not found'):
        ds[1]


# transforms ---------------------------------------------------------------------------------------
@pytest.mark.parametrize('normalize,channels,lo', [('imagenet', 3, -IMAGENET_DEFAULT_MEAN[0] / IMAGENET_DEFAULT_STD[0]), ('half', 1, -1.0), (None, 3, 0.0)])
def test_default_transforms_eval(table, normalize, channels, lo):
    t = table.copy(); t['path'] = t['path'].iloc[0]
    cv2.imwrite(t['path'].iloc[0], np.zeros((100, 80), np.uint8))
    s = CXRDataset(t, ['Mass'], channels=channels, transform=default_transforms(32, train=False, normalize=normalize))[0]
    assert s['image'].shape == (channels, 32, 32)
    assert np.isclose(s['image'][0].min().item(), lo, atol=1e-5)


def test_default_transforms_train_keeps_contract(table):
    torch.manual_seed(0)
    ds = CXRDataset(table, ['Effusion', 'Mass'], boxes=BOXES, transform=default_transforms(40, train=True))
    for _ in range(5):
        s = ds[0]
        assert s['image'].shape == (3, 40, 40) and s['boxes'].canvas_size == (40, 40)
        assert len(s['boxes']) == len(s['box_labels']) and (s['boxes'][:, 2:] <= 40).all()
    with pytest.raises(CXRDataError, match="normalize='z'"):
        default_transforms(32, train=False, normalize='z')


# collation and loaders ----------------------------------------------------------------------------
def test_collate(table, tmp_path):
    ds = CXRDataset(table.assign(mask_path=str(tmp_path / 'm.png')), ['Effusion', 'Mass'], boxes=BOXES, image_size=32)
    b = collate_cxr([ds[0], ds[1]])
    assert b['image'].shape == (2, 3, 32, 32) and type(b['image']) is torch.Tensor
    assert b['label'].shape == b['label_mask'].shape == (2, 2) and b['mask'].shape == (2, 1, 32, 32)
    assert b['index'].tolist() == [0, 1]
    assert isinstance(b['boxes'], list) and [len(x) for x in b['boxes']] == [1, 0]
    assert [x.tolist() for x in b['box_labels']] == [[0], []]


def test_dataloader_seeded_and_configured(table):
    ds = CXRDataset(pd.concat([table] * 5, ignore_index=True), ['Mass'], image_size=16)
    order = lambda seed: [i for b in make_dataloader(ds, 3, shuffle=True, seed=seed, num_workers=0) for i in b['index'].tolist()]
    assert order(7) == order(7) and sorted(order(7)) == list(range(10)) and order(7) != order(8)
    dl = make_dataloader(ds, 4, shuffle=False)
    assert dl.num_workers == 0                             # 10 images: no workers
    assert dl.pin_memory == torch.cuda.is_available()
    big = make_dataloader(ds, 1, shuffle=False, num_workers='auto')
    assert big.num_workers >= 1 and not big.persistent_workers   # fresh seeded workers each epoch (exact resume)
    assert [b['index'].item() for b in big] == list(range(10))
    assert len(make_dataloader(ds, 4, shuffle=False, drop_last=True)) == 2


# the embedded NIH sample --------------------------------------------------------------------------
def test_sample_dataset():
    ds = sample_dataset(size=256)
    assert len(ds) == 646 and ds.labels == list(NIH_LABELS)
    boxed = [i for i, n in enumerate(ds.table['image']) if n in ds.boxes]
    assert len(boxed) == 12
    s = ds[boxed[0]]
    assert s['image'].shape == (3, 256, 256) and len(s['boxes']) >= 1
    assert (s['boxes'][:, 2:] <= 256).all()
    assert len(sample_dataset(split='test')) == 83 and len(sample_dataset(split='train_val')) == 563
    small = sample_dataset(size=256, image_size=64)
    assert torch.allclose(small[boxed[0]]['boxes'], s['boxes'] / 4)
    with pytest.raises(CXRDataError, match="split='val'"):
        sample_dataset(split='val')


# truncated files (defect: libjpeg only warned and the bottom half came back grey) ------------------
@pytest.mark.parametrize('ext', ['.jpg', '.png'])
def test_truncated_image_raises_naming_the_file(tmp_path, ext):
    from PIL import Image
    rng = np.random.default_rng(0)
    x = cv2.GaussianBlur(rng.integers(0, 256, (256, 256), dtype=np.uint8), (3, 3), 0)
    cv2.imwrite(str(tmp_path / f'cv{ext}'), x); Image.fromarray(x).save(tmp_path / f'pil{ext}')
    for n in ('cv', 'pil'):
        full = (tmp_path / f'{n}{ext}').read_bytes()
        assert read_image(tmp_path / f'{n}{ext}').shape == (256, 256)
        cut = tmp_path / f'{n}_cut{ext}'; cut.write_bytes(full[:len(full) // 2])
        with pytest.raises(CXRDataError, match=f'{n}_cut{ext}: not a readable PNG/JPEG'):
            read_image(cut)
