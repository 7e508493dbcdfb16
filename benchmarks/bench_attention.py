"""Training throughput of seed 003's backbones with and without spatial attention, and of seed 004's networks.

For each backbone (ResNet-101, EfficientNet-B0, EfficientNet-B3, MobileNetV2 by default), images/second of the
Learner's training step (forward + BCE + backward + Adam step, `Learner.train_epoch`, 13 outputs) on one synthetic
batch already on the device, for the plain timm model and its `_sa` twin (`cxr_notebooks.models.spatial_attention`:
CBAM spatial attention after the stride-8/16/32 stages). ratio = sa / plain images/s (below 1: attention is
slower); overhead_pct = how much longer a training step takes with attention. The abstract claims "little
computational cost": parameters and FLOPs are `attention_overhead` (a few hundred parameters, < 0.1 % FLOPs);
this measures what the gates (memory-bound elementwise work) cost in wall-clock time.
Each rate is the batch size over the median time per batch of --steps batches, after --warmup untimed ones.
--amp trains with autocast (bf16 where the GPU supports it, else fp16); AMP does not apply on the CPU, where
the rows are fp32 and say so.

    .venv/bin/python benchmarks/bench_attention.py [--device auto] [--size 224] [--batch-size 32] [--amp]
                                                   [--models resnet101 efficientnet_b0 ...] [--steps 10] [--warmup 3] [--json OUT]
    .venv/bin/python benchmarks/bench_attention.py --seed004 [--amp]   # seed 004's three networks vs a plain ResNet-50
    # CPU check with tiny settings:
    .venv/bin/python benchmarks/bench_attention.py --device cpu --size 32 --batch-size 2 --steps 2 --warmup 1 --models mobilenetv2_100
"""
from __future__ import annotations
import argparse, functools, itertools, json
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from bench_train import _rate, device_and_machine, timing_arguments
from cxr_notebooks.core import seed_everything
from cxr_notebooks.methods.spatial_attention import SEED003_LABELS
from cxr_notebooks.models.backbones import create_model
from cxr_notebooks.models.spatial_attention import SA_BACKBONES
import cxr_notebooks.models.data_efficient  # noqa: F401  (registers seed 004's networks with timm and the backbones)
from cxr_notebooks.train.learner import Learner, create_optimizer

WORK = Path(__file__).resolve().parent / '_work'


def _train_rate(name: str, size: int, batch_size: int, device: torch.device, amp: bool, warmup: int, steps: int,
                n_labels: int = len(SEED003_LABELS)) -> float:
    "Images/second of one Learner training step of `name` (`n_labels` outputs, Adam, BCE) on a synthetic batch on `device`."
    seed_everything(0)
    model = create_model(name, n_labels)
    learn = Learner(model, [], [], nn.BCEWithLogitsLoss(), create_optimizer('adam', model, 1e-4), device=device,
                    amp='auto' if amp else False, seed=None, progress=False, out_dir=WORK)
    batch = {'image': torch.randn(batch_size, 3, size, size, device=device),
             'label': (torch.rand(batch_size, n_labels, device=device) < 0.1).float()}
    def run(batches):
        learn.train_dl = batches; learn.train_epoch(0)
    rate = _rate(run, itertools.repeat(batch), warmup, steps, batch_size, device)
    if device.type == 'cuda': torch.cuda.empty_cache()
    return rate


def _precision(amp: bool, device: torch.device) -> str:
    return ('bf16' if torch.cuda.is_bf16_supported() else 'fp16') if amp and device.type == 'cuda' else \
        'fp32 (AMP n/a on CPU)' if amp else 'fp32'


def measure(models: list[str], size: int, batch_size: int, device: torch.device, amp: bool, warmup: int, steps: int) -> list[dict]:
    "One row per backbone: plain and `_sa` images/s, their ratio and the attention's overhead per step."
    precision, rows = _precision(amp, device), []
    for b in models:
        plain, sa = (_train_rate(n, size, batch_size, device, amp, warmup, steps) for n in (b, f'{b}_sa'))
        rows.append({'backbone': b, 'size': size, 'batch_size': batch_size, 'precision': precision,
                     'plain_img_s': plain, 'sa_img_s': sa, 'ratio': sa / plain, 'overhead_pct': 100 * (plain / sa - 1)})
    return rows


SEED004_NETWORKS = ('advanced_resnet50', 'chest_xray_attention_net', 'rare_disease_net')

def measure_seed004(size: int, batch_size: int, device: torch.device, amp: bool, warmup: int, steps: int) -> list[dict]:
    "Seed 004's networks (14 outputs, the plain classification step) and their ensemble, each as a ratio to a plain ResNet-50."
    base = _train_rate('resnet50', size, batch_size, device, amp, warmup, steps, n_labels=14)
    rates = {n: _train_rate(n, size, batch_size, device, amp, warmup, steps, n_labels=14) for n in SEED004_NETWORKS}
    rates['ensemble (the three trained one after another)'] = 1 / sum(1 / r for r in rates.values())
    return [{'model': n, 'size': size, 'batch_size': batch_size, 'precision': _precision(amp, device), 'img_s': r,
             'resnet50_img_s': base, 'ratio': r / base} for n, r in rates.items()]


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--models', nargs='+', default=list(SA_BACKBONES), choices=SA_BACKBONES, help='plain backbones (each is run with and without attention)')
    ap.add_argument('--seed004', action='store_true', help="seed 004's networks and their ensemble vs a plain ResNet-50 instead")
    ap.add_argument('--size', type=int, default=224, help='image size (default 224)')
    ap.add_argument('--batch-size', type=int, default=32, help='batch size (default 32)')
    timing_arguments(ap, warmup=3, amp=True)
    a = ap.parse_args(argv)
    device, machine = device_and_machine(a)
    rows = (measure_seed004 if a.seed004 else functools.partial(measure, a.models))(a.size, a.batch_size, device, a.amp, a.warmup, a.steps)
    print(f"Training throughput {'of seed 004' + chr(39) + 's networks' if a.seed004 else 'with and without spatial attention'}, images/second ({machine['device']}, {machine['cpus']} CPUs, "
          f"{machine['torch_threads']} torch threads, {a.steps} timed steps)")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f'{v:.3g}'))
    print('ratio = img_s / plain ResNet-50 img_s' if a.seed004 else
          'ratio = attention / plain images/s (below 1: slower with attention); overhead_pct = extra time per training step')
    if a.json:
        a.json.write_text(json.dumps({'machine': machine, 'rows': rows}, indent=1))
    return rows


if __name__ == '__main__':
    main()
