"""Contract tests for cxr_notebooks.data.cache.ImageCache: equality with read_image, invalidation, failure safety."""
import os
import pickle

import cv2
import numpy as np
import pandas as pd
import pytest

from cxr_notebooks.data.cache import ImageCache
from cxr_notebooks.core import CXRDataError
from cxr_notebooks.data.datasets import CXRDataset, read_image


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        p = tmp_path / 'img' / f'{i:03d}.png'; p.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(p), cv2.GaussianBlur(rng.integers(0, 256, (96, 80), dtype=np.uint8), (5, 5), 0))
        paths.append(p)
    return paths


def test_cached_pixels_equal_read_image(images, tmp_path):
    c = ImageCache.build(images, 32, tmp_path / 'c', num_workers=2, progress=False)
    assert len(c) == 6 and c.size == 32 and c.data.shape == (6, 32, 32) and c.data.dtype == np.uint8
    for i, p in enumerate(images):
        assert np.array_equal(c[i], read_image(p, 32)) and np.array_equal(c.get(p), read_image(p, 32))
        assert c.stored_shape(i) == (96, 80)
    assert c.index_of(str(images[2])) == 2 and c.index_of('nope.png') is None
    with pytest.raises(CXRDataError, match='nope.png: not in the cache'):
        c.get('nope.png')


def test_reuse_and_invalidation(images, tmp_path):
    d = tmp_path / 'c'
    c = ImageCache.build(images, 32, d, progress=False)
    assert ImageCache.build(images, 32, d, progress=False).data_path == c.data_path       # fresh: reused
    assert ImageCache.open(d, 32, paths=images).data_path == c.data_path
    shorter = ImageCache.build(images[:4], 32, d, progress=False)                         # list changed
    assert shorter.data_path != c.data_path and len(shorter) == 4 and not c.data_path.exists()
    reordered = images[:4][::-1]
    with pytest.raises(CXRDataError, match='stale'):
        ImageCache.open(d, 32, paths=reordered)
    assert np.array_equal(ImageCache.build(reordered, 32, d, progress=False)[0], read_image(images[3], 32))
    other = ImageCache.build(reordered, 16, d, progress=False)                              # size changed
    assert other.size == 16 and other[0].shape == (16, 16) and ImageCache.open(d, 32).size == 32
    # a file rewritten with new pixels (new mtime/size) makes the cache stale and is re-decoded
    cv2.imwrite(str(images[0]), np.full((96, 80), 7, np.uint8)); os.utime(images[0], ns=(1, 1))
    assert not ImageCache.open(d, 16).is_fresh(reordered)
    assert (ImageCache.build(reordered, 16, d, progress=False)[3] == 7).all()


def test_corrupt_image_leaves_no_cache(images, tmp_path):
    bad = images[0].parent / 'bad.png'; bad.write_bytes(b'\x89PNG\r\n\x1a\n' + b'\0' * 20)
    d = tmp_path / 'c'
    with pytest.raises(CXRDataError, match='bad.png: not a readable PNG/JPEG'):
        ImageCache.build(images[:3] + [bad] + images[3:], 32, d, num_workers=2, progress=False)
    assert [f.name for f in d.iterdir()] == ['images_32px.json.lock']   # only the build lock, which nothing trusts
    with pytest.raises(CXRDataError, match='no readable cache index'):
        ImageCache.open(d, 32)


def test_failed_rebuild_keeps_previous_cache_consistent(images, tmp_path):
    d = tmp_path / 'c'
    c = ImageCache.build(images, 32, d, progress=False)
    with pytest.raises(CXRDataError, match='gone.png: image file not found'):
        ImageCache.build(images + [tmp_path / 'gone.png'], 32, d, progress=False)
    again = ImageCache.open(d, 32, paths=images)
    assert again.data_path == c.data_path and sorted(f.name for f in d.iterdir()) == sorted([c.data_path.name, c.index_path.name, 'images_32px.json.lock'])


def test_missing_pixel_file_and_repeated_paths(images, tmp_path):
    c = ImageCache.build(images, 32, tmp_path / 'c', progress=False)
    c.data_path.unlink()
    with pytest.raises(CXRDataError, match='pixel file .* is missing'):
        ImageCache.open(tmp_path / 'c', 32)
    assert len(ImageCache.build(images, 32, tmp_path / 'c', progress=False)) == 6   # rebuilt
    dup = ImageCache.build(images + images[:1], 32, tmp_path / 'd', progress=False)   # a repeated path is cached once
    assert len(dup) == 6 and dup.is_fresh(images + images[:1]) and dup.index_of(images[0]) == 0


def test_dataset_reads_from_cache(images, tmp_path):
    c = ImageCache.build(images, 32, tmp_path / 'c', progress=False)
    c = pickle.loads(pickle.dumps(c))   # as a loader worker receives it: the memmap reopens lazily
    tab = pd.DataFrame({'image': [p.name for p in images], 'path': [str(p) for p in images], 'Mass': 1.0})
    boxes = pd.DataFrame({'image': ['001.png'], 'label': ['Mass'], 'x_min': [8.0], 'y_min': [12.0], 'x_max': [40.0], 'y_max': [48.0]})
    cached = CXRDataset(tab, ['Mass'], cache=c, boxes=boxes)
    direct = CXRDataset(tab, ['Mass'], image_size=32, boxes=boxes)
    assert cached.image_size == 32
    for i in (0, 1, 5):
        a, b = cached[i], direct[i]
        assert np.array_equal(a['image'], b['image']) and np.allclose(a['boxes'], b['boxes'])
    assert np.allclose(cached[1]['boxes'].tolist(), [[3.2, 4.0, 16.0, 16.0]])   # 80x96 stored -> 32x32
    with pytest.raises(CXRDataError, match='image_size=64 but the cache holds 32x32'):
        CXRDataset(tab, ['Mass'], cache=c, image_size=64)
    with pytest.raises(CXRDataError, match=r'1 image\(s\) not in the cache'):
        CXRDataset(pd.concat([tab, tab.assign(path='/x/other.png').head(1)]), ['Mass'], cache=c)


# concurrent builds (defect: one builder deleted the other's pixel file) ------------------------------
_BUILDER = """
import sys, time, hashlib
from pathlib import Path
from cxr_notebooks.data.cache import ImageCache
paths, cache_dir, go = sys.argv[3:], sys.argv[1], Path(sys.argv[2])
while not go.exists(): time.sleep(0.001)
c = ImageCache.build(paths, 48, cache_dir, num_workers=1, progress=False)
print(hashlib.sha256(c.data.tobytes()).hexdigest())
"""


@pytest.mark.slow
def test_concurrent_builds_of_one_cache(tmp_path):
    "Two processes building the same cache at once both succeed with the same pixels; the cache opens afterwards."
    import hashlib, subprocess, sys, time
    rng = np.random.default_rng(1)
    paths = []
    for i in range(40):
        p = tmp_path / 'img' / f'{i:03d}.png'; p.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(p), rng.integers(0, 256, (300, 300), dtype=np.uint8)); paths.append(str(p))
    expected = np.stack([read_image(p, 48) for p in paths])
    for trial in range(5):
        d, go = tmp_path / f'c{trial}', tmp_path / f'go{trial}'
        procs = [subprocess.Popen([sys.executable, '-c', _BUILDER, str(d), str(go), *paths],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        time.sleep(1.0); go.touch()
        outs = [p.communicate(timeout=120) for p in procs]
        assert all(p.returncode == 0 for p in procs), [o[1][-600:] for o in outs]
        assert outs[0][0].strip() == outs[1][0].strip() == hashlib.sha256(expected.tobytes()).hexdigest()
        c = ImageCache.open(d, 48, paths=paths)
        assert np.array_equal(c.data, expected) and len(list(d.glob('*.npy'))) == 1


def test_reader_survives_a_rebuild(images, tmp_path):
    "A cache opened before a rebuild replaced its pixel file still reads its pixels."
    d = tmp_path / 'c'
    old = ImageCache.build(images, 32, d, progress=False)
    ImageCache.build(images[:3], 32, d, progress=False)          # new list: new pixel file, the old one unlinked
    assert not old.data_path.exists() and np.array_equal(old[5], read_image(images[5], 32))


# issue 18/21: truncated pixel files, disk space, a full disk, interrupted builds, processes, shared folder --
def test_truncated_pixel_file_is_named_then_rebuilt(images, tmp_path):
    c = ImageCache.build(images, 32, tmp_path / 'c', progress=False)
    with open(c.data_path, 'r+b') as f: f.truncate(c.data_path.stat().st_size // 2)
    with pytest.raises(CXRDataError, match=rf'{c.data_path.name} has \d+ bytes, not \d+ \(truncated'):
        ImageCache.open(tmp_path / 'c', 32)
    again = ImageCache.build(images, 32, tmp_path / 'c', progress=False)
    assert again.data_path != c.data_path and np.array_equal(again[5], read_image(images[5], 32))


def test_free_space_check_names_folder_and_sizes(images, tmp_path, monkeypatch):
    from cxr_notebooks.data import cache as cache_mod
    from cxr_notebooks.data.cache import check_free_space
    with pytest.raises(CXRDataError, match=r'/x/cache: the image cache needs 22.50 GB but the disk has 20.00 GB free'):
        check_free_space('/x/cache', 112_120 * 448 * 448, free=20 * 10**9)
    check_free_space('/x/cache', 10**9, free=2 * 10**9)
    monkeypatch.setattr(cache_mod.shutil, 'disk_usage', lambda p: type('U', (), {'free': 1000})())
    d = tmp_path / 'c'
    with pytest.raises(CXRDataError, match=rf'{d}: the image cache needs 0.00 GB but the disk has 0.00 GB free'):
        ImageCache.build(images, 32, d, progress=False)   # 6 x 32 x 32 + header > 1000 bytes
    assert [f.name for f in d.iterdir()] == ['images_32px.json.lock']


def test_full_disk_is_one_line_and_leaves_nothing(images, tmp_path, monkeypatch):
    import errno
    from cxr_notebooks.data import cache as cache_mod
    def full(*a): raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(cache_mod.os, 'posix_fallocate', full)
    d = tmp_path / 'c'
    with pytest.raises(CXRDataError, match=rf'^No space left on device: {d} while writing images_32px\.\w+\.partial\.npy') as e:
        ImageCache.build(images, 32, d, progress=False)
    assert '\n' not in str(e.value) and e.value.__cause__ is None and e.value.__suppress_context__
    assert [f.name for f in d.iterdir()] == ['images_32px.json.lock']


def test_build_in_processes_equals_one_process(images, tmp_path):
    one = ImageCache.build(images, 24, tmp_path / 'one', num_workers=1, progress=False, chunk=2)
    many = ImageCache.build(images, 24, tmp_path / 'many', num_workers=2, progress=False, chunk=2)
    assert np.array_equal(one.data, many.data) and one.entries == many.entries


def test_dataset_caches_share_a_folder(images, tmp_path):
    from cxr_notebooks.data.cache import dataset_cache_name
    from cxr_notebooks.train.stages import image_cache
    a = pd.DataFrame({'path': [str(p) for p in images[:3]]}); b = pd.DataFrame({'path': [str(p) for p in images[2:]]})
    ca, cb = image_cache(a, 32, tmp_path, progress=False), image_cache(b, 32, tmp_path, progress=False)
    assert ca.index_path != cb.index_path and ca.data_path.exists() and cb.data_path.exists()   # both stay
    assert image_cache(a, 32, tmp_path, progress=False).data_path == ca.data_path                # a second run reuses
    assert dataset_cache_name(images[:3]) == dataset_cache_name([str(p) for p in images[:3]]) != dataset_cache_name(images[2:])


_KILLED_BUILD = """
import os, signal, sys, cv2
from cxr_notebooks.data.cache import ImageCache

class Resize:
    "The area resize; kills this process (SIGKILL: no clean-up at all) at call `stop`."
    key, size = 'area', 40
    def __init__(self, stop): self.calls, self.stop = 0, stop
    def __call__(self, img):
        self.calls += 1
        if self.calls == self.stop: os.kill(os.getpid(), signal.SIGKILL)
        return cv2.resize(img, (40, 40), interpolation=cv2.INTER_AREA)

ImageCache.build(sys.argv[3:], 40, sys.argv[1], num_workers=1, progress=False, preprocess=Resize(int(sys.argv[2])), chunk=4)
"""


@pytest.mark.slow
def test_killed_build_resumes_to_the_same_bytes(tmp_path):
    import subprocess, sys
    from pathlib import Path
    root = Path(__file__).parents[1]
    rng = np.random.default_rng(3)
    paths = []
    for i in range(22):
        p = tmp_path / 'img' / f'{i:03d}.png'; p.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(p), rng.integers(0, 256, (120, 100), dtype=np.uint8)); paths.append(str(p))

    class Resize:
        key, size = 'area', 40
        calls = 0
        def __call__(self, img):
            Resize.calls += 1
            return cv2.resize(img, (40, 40), interpolation=cv2.INTER_AREA)

    d = tmp_path / 'c'
    r = subprocess.run([sys.executable, '-c', _KILLED_BUILD, str(d), '11', *paths], capture_output=True, text=True, timeout=300,
                       cwd=root, env={**os.environ, 'PYTHONPATH': str(root)})
    assert r.returncode == -9, r.stderr                       # killed at image 11: chunks 0-3 and 4-7 are done
    assert len(list(d.glob('*.partial.npy'))) == 1 and not list(d.glob('*px*.json'))
    resumed = ImageCache.build(paths, 40, d, num_workers=1, progress=False, preprocess=Resize(), chunk=4)
    assert Resize.calls == 22 - 8                             # the finished chunks were not decoded again
    whole = ImageCache.build(paths, 40, tmp_path / 'whole', num_workers=1, progress=False, preprocess=Resize(), chunk=4)
    assert resumed.data_path.read_bytes() == whole.data_path.read_bytes() and resumed.entries == whole.entries
    assert not list(d.glob('*.partial.*'))
