"""Training throughput of DenseNet-121 through `Learner`: model alone vs loader -> model, fp32 vs AMP, channels_last.

For each image size, precision (fp32; AMP = bf16 from compute capability 8.0, fp16 before; not applicable on CPU)
and memory format (contiguous; channels_last), images/second of the Learner's training step
(forward + BCE + backward + Adam step, `Learner.train_epoch`) fed
  (i)  model:          one synthetic batch already on the device, over and over;
  (ii) loader -> model: `make_dataloader` over a `CXRDataset` of the embedded NIH sample
       (`nih_sample_table(256)`, tiled to enough batches) with the training augmentation `AffineAugment(size)`.
Also the loader alone (decode + augment + collate, no model). ratio = (ii) / (i): below 1 the loader is
the bottleneck. The projected epoch is the full NIH official train_val split (86,524 images) at rate (ii).
Each rate is the batch size over the median time per batch of --steps batches, after --warmup untimed ones
(worker start-up, allocator, kernel selection); the median keeps a shared machine's stalls out.

Then the ratio that matters on rented GPUs (issue 21): the training loader's images/second per CPU core (one
process reading `ImageCache`d pixels through `CXRDataset`, torch at one thread as in a worker), for the uint8
path training uses (`AffineAugment`: one OpenCV warp, float conversion on the device) and the float v2 path it
replaced, next to PUBLISHED_GPU_RATES, and which of those GPUs a loader with 2, 4 and 8 cores would hold back.

    .venv/bin/python benchmarks/bench_train.py [--sizes 224 512] [--batch-size 16] [--steps 10] [--device auto]
                                               [--num-workers auto] [--warmup 2] [--json OUT]
"""
from __future__ import annotations
import argparse, itertools, json, os, statistics, time
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from cxr_notebooks.core import seed_everything
from cxr_notebooks.data.cache import ImageCache
from cxr_notebooks.data.datasets import AffineAugment, CXRDataset, default_transforms, make_dataloader, usable_cpus
from cxr_notebooks.data.labels import NIH_LABELS
from cxr_notebooks.data.nih import nih_sample_table
from cxr_notebooks.models.backbones import create_model
from cxr_notebooks.train.learner import Learner, autocast_dtype, create_optimizer

NIH_TRAIN_VAL = 86_524  # images in the NIH ChestX-ray14 official train_val list
WORK = Path(__file__).resolve().parent / '_work'
#: DenseNet-121 training at 224 px with AMP, images/second: EXTERNAL ESTIMATES (issue 21's figures from public
#: benchmarks), not measured here; replace them with `bench_train.py --device cuda` rows where a GPU is at hand.
PUBLISHED_GPU_RATES: dict[str, float] = {'T4': 400.0, 'A100': 2_000.0, 'H100': 3_000.0}


def _sync(device: torch.device) -> None:
    if device.type == 'cuda': torch.cuda.synchronize(device)


def _rate(run, batches, warmup: int, steps: int, batch_size: int, device: torch.device) -> float:
    "Images/second of `run(iterable)` fed one batch of `batches` at a time: batch size / the median time of `steps` batches."
    run(itertools.islice(batches, warmup)); _sync(device)
    times = []
    for _ in range(steps):
        t = time.perf_counter(); run(itertools.islice(batches, 1)); _sync(device)
        times.append(time.perf_counter() - t)
    return batch_size / statistics.median(times)


def _learner(size: int, device: torch.device, amp: bool, channels_last: bool) -> Learner:
    "A fresh DenseNet-121 (14 NIH findings) in a Learner with Adam and BCE, as the reproduction notebooks train it."
    seed_everything(0)  # as Learner.fit does (deterministic kernels included)
    model = create_model('densenet121', len(NIH_LABELS))
    return Learner(model, [], [], nn.BCEWithLogitsLoss(), create_optimizer('adam', model, 1e-4), device=device,
                   amp='auto' if amp else False, channels_last=channels_last, seed=None, progress=False, out_dir=WORK)


def _train(learn: Learner):
    "Run `learn`'s training step over an iterable of batches."
    def run(batches):
        learn.train_dl = batches; learn.train_epoch(0)
    return run


def _loader(size: int, batch_size: int, n_batches: int, num_workers) -> torch.utils.data.DataLoader:
    "The training loader over the embedded NIH sample, its table repeated to hold `n_batches` full batches."
    tab = nih_sample_table(256)
    tab = pd.concat([tab] * -(-n_batches * batch_size // len(tab)), ignore_index=True)
    ds = CXRDataset(tab, NIH_LABELS, transform=AffineAugment(size), image_size=size)
    return make_dataloader(ds, batch_size, shuffle=True, seed=0, num_workers=num_workers, drop_last=True)


def loader_rate_per_core(size: int, n: int = 2000, repeats: int = 3) -> dict[str, float]:
    "Images/second of the training loader with one worker (one core) over cached pixels: uint8 warp vs float v2 augmentation."
    tab = nih_sample_table(256).head(200)
    cache = ImageCache.build(tab['path'].tolist(), size, WORK / 'cache', progress=False)
    tab = pd.concat([tab] * -(-n // len(tab)), ignore_index=True).head(n)   # epochs long enough to hide the worker's start
    threads = torch.get_num_threads(); torch.set_num_threads(1)   # as in a loader worker
    try:
        out = {}
        for name, tf in (('uint8_warp', AffineAugment(size)), ('float_v2', default_transforms(size, train=True))):
            dl = make_dataloader(CXRDataset(tab, NIH_LABELS, transform=tf, cache=cache), 32, shuffle=True, num_workers=1)
            best = float('inf')
            for _ in range(repeats):   # whole epochs of one worker (one core): per-sample seeding, augmentation, collation
                t = time.perf_counter()
                for _ in dl: pass
                best = min(best, time.perf_counter() - t)
            out[name] = len(tab) / best
        return out
    finally: torch.set_num_threads(threads)


def loader_bounds(per_core: float, cores: tuple[int, ...] = (2, 4, 8), gpus: dict[str, float] = PUBLISHED_GPU_RATES) -> list[dict]:
    "For each core count: the loader's rate (per_core x cores, an upper bound: the training process needs CPU too) and the GPUs it would hold back."
    return [{'cores': c, 'loader_img_s': per_core * c, 'bounds': [g for g, r in gpus.items() if r > per_core * c]} for c in cores]


def measure(sizes: list[int], batch_size: int, steps: int, device: torch.device, num_workers, warmup: int) -> list[dict]:
    "One row per (size, precision, memory format): model img/s, loader -> model img/s, ratio, projected NIH epoch."
    rows, n_batches = [], warmup + steps
    amp_name = ({torch.bfloat16: 'bf16', torch.float16: 'fp16'}[autocast_dtype(torch.cuda.get_device_capability(device))]
                if device.type == 'cuda' else None)
    for size in sizes:
        loader_only = _rate(lambda b: [x for x in b], iter(_loader(size, batch_size, n_batches, num_workers)),
                            warmup, steps, batch_size, torch.device('cpu'))
        synthetic = {'image': torch.randn(batch_size, 3, size, size, device=device),
                     'label': (torch.rand(batch_size, len(NIH_LABELS), device=device) < 0.1).float()}
        for amp, channels_last in itertools.product((False, True), (False, True)):
            row = {'size': size, 'precision': (amp_name or 'n/a (CPU)') if amp else 'fp32',
                   'channels_last': channels_last, 'batch_size': batch_size, 'loader_only_img_s': loader_only}
            if amp and amp_name is None:
                rows.append({**row, 'model_img_s': None, 'loader_model_img_s': None, 'ratio': None, 'nih_epoch_min': None})
                continue
            run = _train(_learner(size, device, amp, channels_last))
            model = _rate(run, itertools.repeat(synthetic), warmup, steps, batch_size, device)
            run = _train(_learner(size, device, amp, channels_last))
            fed = _rate(run, iter(_loader(size, batch_size, n_batches, num_workers)), warmup, steps, batch_size, device)
            rows.append({**row, 'model_img_s': model, 'loader_model_img_s': fed, 'ratio': fed / model,
                         'nih_epoch_min': NIH_TRAIN_VAL / fed / 60})
            if device.type == 'cuda': torch.cuda.empty_cache()
    return rows


def timing_arguments(ap: argparse.ArgumentParser, warmup: int, amp: bool = False) -> None:
    "The options every benchmark here shares: --steps, --warmup, --device, --json (and --amp where asked)."
    if amp: ap.add_argument('--amp', action='store_true', help='autocast (bf16 where supported, else fp16); CUDA only')
    ap.add_argument('--steps', type=int, default=10, help='timed batches per rate (default 10)')
    ap.add_argument('--warmup', type=int, default=warmup, help=f'untimed batches before each rate (default {warmup})')
    ap.add_argument('--device', default='auto', help="'auto' (CUDA if available), 'cpu', 'cuda', 'cuda:1', ...")
    ap.add_argument('--json', type=Path, help='also write the rows and the machine description to this JSON file')


def device_and_machine(a: argparse.Namespace, **extra) -> tuple[torch.device, dict]:
    "The device `--device` names and the machine's description (device, CPUs, torch threads and version, load) for the printout and JSON."
    device = torch.device(a.device if a.device != 'auto' else ('cuda' if torch.cuda.is_available() else 'cpu'))
    return device, {'device': torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu', 'cpus': usable_cpus(),
                    'torch_threads': torch.get_num_threads(), 'torch': torch.__version__, **extra, 'steps': a.steps,
                    'warmup': a.warmup, 'load_average': os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--sizes', type=int, nargs='+', default=[224, 512], help='image sizes (default 224 512)')
    ap.add_argument('--batch-size', type=int, default=16, help='batch size (default 16)')
    ap.add_argument('--num-workers', default='auto', help="loader workers: an int or 'auto' (make_dataloader's choice)")
    timing_arguments(ap, warmup=2)
    a = ap.parse_args(argv)
    workers = a.num_workers if a.num_workers == 'auto' else int(a.num_workers)
    device, machine = device_and_machine(a, num_workers=workers)
    rows = measure(a.sizes, a.batch_size, a.steps, device, workers, a.warmup)
    df = pd.DataFrame(rows)
    print(f"DenseNet-121 training throughput, images/second ({machine['device']}, {machine['cpus']} CPUs, "
          f"{machine['torch_threads']} torch threads, loader workers: {workers}, batch {a.batch_size}, {a.steps} timed steps)")
    print(df.to_string(index=False, float_format=lambda v: f'{v:.3g}', na_rep='n/a'))
    print('ratio = (loader -> model) / model: below 1 the loader is the bottleneck; '
          f'nih_epoch_min = {NIH_TRAIN_VAL:,} train_val images at the loader -> model rate')
    per_core = loader_rate_per_core(min(a.sizes))
    print(f"\ntraining loader on one core, {min(a.sizes)} px from the cache: uint8 warp {per_core['uint8_warp']:.0f} img/s, "
          f"float v2 {per_core['float_v2']:.0f} img/s ({per_core['uint8_warp'] / per_core['float_v2']:.1f}x)")
    print('GPU rates, DenseNet-121 at 224 with AMP (external estimates, not measured here): '
          + ', '.join(f'{g} ~{r:,.0f} img/s' for g, r in PUBLISHED_GPU_RATES.items()))
    bounds = loader_bounds(per_core['uint8_warp'])
    for b in bounds:
        print(f"  {b['cores']} cores: loader <= {b['loader_img_s']:,.0f} img/s, would hold back: {', '.join(b['bounds']) or 'none of them'}")
    if a.json:
        a.json.write_text(json.dumps({'machine': machine, 'rows': rows, 'loader_per_core': per_core, 'loader_bounds': bounds}, indent=1))
    return rows


if __name__ == '__main__':
    main()
