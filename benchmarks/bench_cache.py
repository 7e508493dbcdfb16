"""Decode-and-resize per item vs the on-disk ImageCache: images/second over several epochs of random access.

Writes N NIH-like 1024x1024 8-bit grayscale PNGs to benchmarks/_work/ (gitignored): real films from
data/nih/images256 upsampled 4x (bicubic) with mild grain, so PNG compression works on radiograph-like
texture (the NIH release averages about 0.4 MB per PNG). Then times, over the same random order:
  (a) read_image(path, 224) per item (decode the 1024 px PNG + INTER_AREA resize), and
  (b) ImageCache[i] (a 224x224 slice of the memmap),
each also through CXRDataset.__getitem__ (what a DataLoader worker calls; torch runs one thread per
worker, so this script does too), best of --repeats passes, and prints the ratios. The cache is built
twice first, in 1 process and in one per usable core, to print the build's scaling.

    .venv/bin/python benchmarks/bench_cache.py [--n 64] [--size 224] [--epochs 3] [--repeats 3]
"""
from __future__ import annotations
import argparse, shutil, time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from cxr_notebooks.data.cache import ImageCache
from cxr_notebooks.core import embedded_data_dir
from cxr_notebooks.data.datasets import CXRDataset, read_image, usable_cpus

WORK = Path(__file__).resolve().parent / '_work'


def make_images(n: int, out: Path, seed: int = 0) -> list[Path]:
    "N 1024x1024 uint8 PNGs made from the embedded 256 px NIH films (reused if already there)."
    out.mkdir(parents=True, exist_ok=True)
    src = sorted((embedded_data_dir() / 'nih' / 'images256').glob('*.png'))
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        p = out / f'nihlike_{i:05d}.png'
        if not p.exists():
            big = cv2.resize(read_image(src[i % len(src)]), (1024, 1024), interpolation=cv2.INTER_CUBIC).astype(np.float32)
            grain = cv2.GaussianBlur(rng.normal(0, 3.0, big.shape).astype(np.float32), (3, 3), 0)
            cv2.imwrite(str(p), np.clip(big + grain, 0, 255).astype(np.uint8))
        paths.append(p)
    return paths


def rate(fn, order, repeats: int = 3) -> float:
    "Images per second of `fn(i)` over the indices in `order`: the best of `repeats` passes (a shared machine is noisy)."
    fn(order[0])   # warm-up
    best = float('inf')
    for _ in range(repeats):
        t = time.perf_counter()
        for i in order: fn(i)
        best = min(best, time.perf_counter() - t)
    return len(order) / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--n', type=int, default=64, help='number of 1024 px images (default 64)')
    ap.add_argument('--size', type=int, default=224, help='image size to decode/cache at (default 224)')
    ap.add_argument('--epochs', type=int, default=3, help='epochs of random access to time (default 3)')
    ap.add_argument('--keep', action='store_true', help='keep benchmarks/_work/ afterwards')
    ap.add_argument('--repeats', type=int, default=3, help='time each reader this many times, keep the best (default 3)')
    a = ap.parse_args()
    torch.set_num_threads(1)   # as in a DataLoader worker process

    paths = make_images(a.n, WORK / 'images')
    mb = np.mean([p.stat().st_size for p in paths]) / 2**20
    print(f'{a.n} PNGs 1024x1024 uint8, {mb:.2f} MB each on average; size {a.size}, {a.epochs} epochs of random order')
    rng = np.random.default_rng(0)
    order = np.concatenate([rng.permutation(a.n) for _ in range(a.epochs)]).tolist()

    builds = {}
    for workers in dict.fromkeys((1, usable_cpus())):   # the build in 1 process, then in one per usable core
        shutil.rmtree(WORK / 'cache', ignore_errors=True)
        t = time.perf_counter()
        cache = ImageCache.build(paths, a.size, WORK / 'cache', num_workers=workers, progress=False, chunk=max(1, a.n // (4 * workers)))
        builds[workers] = time.perf_counter() - t
        print(f'cache build, {workers} process(es): {builds[workers]:.2f} s = {a.n / builds[workers]:.1f} img/s')
    if len(builds) > 1:
        (one, t1), (many, tn) = builds.items()
        print(f'build scaling {one} -> {many} processes: {t1 / tn:.2f}x (ideal {many}x on an idle machine)')
    build_s = builds[1]

    decode = rate(lambda i: read_image(paths[i], a.size), order, a.repeats)
    cached = rate(lambda i: cache[i], order, a.repeats)
    tab = pd.DataFrame({'image': [p.name for p in paths], 'path': [str(p) for p in paths], 'x': 0.0})
    ds_decode = rate(CXRDataset(tab, ['x'], image_size=a.size).__getitem__, order, a.repeats)
    ds_cached = rate(CXRDataset(tab, ['x'], cache=cache).__getitem__, order, a.repeats)
    print(f'(a) read_image decode+resize : {decode:10.1f} img/s')
    print(f'(b) ImageCache[i]            : {cached:10.1f} img/s   ratio (b)/(a) = {cached / decode:.0f}x')
    print(f'    CXRDataset, decoding     : {ds_decode:10.1f} img/s')
    print(f'    CXRDataset, cache=       : {ds_cached:10.1f} img/s   ratio = {ds_cached / ds_decode:.0f}x')
    print(f'break-even: the build pays for itself after {build_s * decode / a.n:.2f} epochs of single-process decoding')
    if not a.keep: shutil.rmtree(WORK / 'cache', ignore_errors=True)


if __name__ == '__main__':
    main()
