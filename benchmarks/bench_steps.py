"""Training-step throughput of seed 000 (Grad-CAM attention loss) and seed 001 (HAM) through `Learner.train_epoch`.

Images/second of the paper's real training step (`Learner.train_epoch`: autocast, the step, backward, Adam step)
on one synthetic batch already on the device, with exactly the keys the step reads:
  --seed 000  for each backbone (PVT `pvt_v2_b2_li`, `vgg16`, `resnet50`; 2 outputs, Adam lr 1e-5, the `full`
              profile's 224 px and batch 32) and each setting of `methods.lung_attention.AttentionStep` +
              `losses.attention.AttentionLoss`: plain cross-entropy (λ = 1: no Grad-CAM at all), the `published`
              variant (λ = 0.5: a Grad-CAM per batch, its term carries no gradient) and the `differentiable` one
              (λ = 0.5: Grad-CAM with create_graph, so backward differentiates through the CAM's gradient: a double
              backward). Batch: image, one-hot No Finding/Effusion label (half positive), prior-region `mask`
              (`prior_region` of a central lung box; empty for No Finding). ratio = setting / plain CE images/s;
              overhead_pct = extra time per step. The projected epoch is the NIH Effusion task's training part
              (4,746 images: `tests/test_methods_lung_attention.py::NIH_SIZES`).
  --seed 001  `methods.ham.ham_step` on `build_ham` networks (ResNet-50, 512 encoder channels, 14 NIH outputs, Adam lr 2e-5,
              weight decay 1e-4, the `full` profile's 512 px and batch 24): the plain dilated ResNet-50 (Table VI row
              RN50-8-LSE, the CAM baseline the notebook trains with `compare_baseline`) and HAM (FAB + PA + bound + union).
              Batch: image, 14 labels, label_mask; no boxes (the official split trains with z = 0). ratio = HAM /
              baseline images/s. The projected epoch is NIH's official train_val list (86,524 images; the training
              part is about 90 % of it, the rest is the patient-level validation part).
Each rate is the batch size over the median time per batch of --steps batches, after --warmup untimed ones.
--amp trains with autocast (bf16 where the GPU supports it, else fp16), as the suite's Learner does on CUDA by
default; AMP does not apply on the CPU, where the rows are fp32 and say so. Weights are random (speed only).

    .venv/bin/python benchmarks/bench_steps.py --seed 000 --amp [--backbones pvt_v2_b2_li vgg16 resnet50] [--size 224] [--batch-size 32]
    .venv/bin/python benchmarks/bench_steps.py --seed 001 --amp [--size 512] [--batch-size 24]
    # common: [--device auto|cpu|cuda] [--steps 10] [--warmup 3] [--json OUT]
    # CPU check with tiny settings:
    .venv/bin/python benchmarks/bench_steps.py --seed 000 --device cpu --size 64 --batch-size 2 --steps 1 --warmup 1 --backbones resnet50
"""
from __future__ import annotations
import argparse, itertools, json
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
from torch import nn

from bench_attention import _precision
from bench_train import NIH_TRAIN_VAL, _rate, device_and_machine, timing_arguments
from cxr_notebooks.core import seed_everything
from cxr_notebooks.data.labels import NIH_LABELS
from cxr_notebooks.losses.attention import AttentionLoss
from cxr_notebooks.methods import ham, lung_attention as la
from cxr_notebooks.models.backbones import create_model
from cxr_notebooks.train.learner import Learner, create_optimizer

WORK = Path(__file__).resolve().parent / '_work'
EFFUSION_TRAIN = 4_746  # images in the NIH Effusion task's training part (tests/test_methods_lung_attention.py::NIH_SIZES)
#: seed 000's settings: name -> (λ, variant); the first is the reference of the ratios
SEED000_SETTINGS: dict[str, tuple[float, str]] = {'plain CE (λ=1)': (1.0, 'published'), 'published (λ=0.5)': (0.5, 'published'),
                                                 'differentiable (λ=0.5)': (0.5, 'differentiable')}
BASELINE = 'RN50-8-LSE'  # the plain dilated ResNet-50 (output stride 8, LSE pooling) of Table VI


def _step_rate(make_model: Callable[[], nn.Module], # builds the network (after seeding: the same weights for every setting)
               loss_fn: nn.Module, # the loss the step is given
               step: Callable, # `step(model, batch, loss_fn)`
               batch: dict, # one batch already on `device`
               device: torch.device, amp: bool, warmup: int, steps: int,
               lr: float, weight_decay: float = 0.0, activation: str = 'sigmoid') -> dict:
    "Images/second (and peak GPU memory) of the Learner's training step `step` with Adam on `batch`, repeated."
    seed_everything(0)  # as Learner.fit does (deterministic cuDNN kernels included)
    model = make_model()
    learn = Learner(model, [], [], loss_fn, create_optimizer('adam', model, lr, weight_decay), device=device,
                    amp='auto' if amp else False, seed=None, progress=False, out_dir=WORK, activation=activation, step=step)
    def run(batches):
        learn.train_dl = batches; learn.train_epoch(0)
    if device.type == 'cuda': torch.cuda.reset_peak_memory_stats(device)
    rate = _rate(run, itertools.repeat(batch), warmup, steps, len(batch['image']), device)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == 'cuda' else None
    del learn, model
    if device.type == 'cuda': torch.cuda.empty_cache()
    return {'img_s': rate, 'peak_mem_gib': peak}


def seed000_batch(size: int, batch_size: int, device: torch.device) -> dict:
    "What `AttentionStep` reads: image, one-hot (No Finding, Effusion) label (odd rows positive), prior-region `mask` (B, 1, H, W)."
    classes = la.task_classes('effusion')
    positive = torch.arange(batch_size) % 2 == 1
    box = (size // 8, size // 8, size - size // 8, size - size // 8)  # a central lung box
    masks = [torch.from_numpy(la.prior_region(box, classes[1] if p else None, size)) for p in positive.tolist()]
    return {'image': torch.randn(batch_size, 3, size, size, device=device),
            'label': nn.functional.one_hot(positive.long(), len(classes)).float().to(device),
            'mask': torch.stack(masks)[:, None].to(device)}


def measure_seed000(backbones: list[str], size: int, batch_size: int, device: torch.device, amp: bool, warmup: int, steps: int) -> list[dict]:
    "One row per (backbone, setting): images/s, ratio and overhead vs plain CE, projected Effusion epoch."
    batch, full, precision, rows = seed000_batch(size, batch_size, device), la.PROFILES['full'], _precision(amp, device), []
    for b in backbones:
        rates = {}
        for name, (lam, variant) in SEED000_SETTINGS.items():
            rates[name] = _step_rate(lambda: create_model(b, len(la.task_classes('effusion'))), AttentionLoss(lam, variant), la.AttentionStep(), batch, device, amp, warmup, steps,
                                     lr=full['lr'], activation='softmax')
        plain = rates[next(iter(SEED000_SETTINGS))]['img_s']
        for name, r in rates.items():
            lam, variant = SEED000_SETTINGS[name]
            rows.append({'backbone': b, 'setting': name, 'lam': lam, 'variant': variant, 'size': size, 'batch_size': batch_size,
                         'precision': precision, 'img_s': r['img_s'], 'plain_ce_img_s': plain, 'ratio': r['img_s'] / plain,
                         'overhead_pct': 100 * (plain / r['img_s'] - 1), 'effusion_epoch_min': EFFUSION_TRAIN / r['img_s'] / 60,
                         'peak_mem_gib': r['peak_mem_gib']})
    return rows


def seed001_batch(size: int, batch_size: int, device: torch.device) -> dict:
    "What `ham_step` reads without boxes: image, 14 NIH labels (about 30 % positive, every image at least one), label_mask."
    label = torch.rand(batch_size, len(NIH_LABELS)) < 0.3
    label[torch.arange(batch_size), torch.arange(batch_size) % len(NIH_LABELS)] = True
    return {'image': torch.randn(batch_size, 3, size, size, device=device), 'label': label.float().to(device),
            'label_mask': torch.ones(batch_size, len(NIH_LABELS), device=device)}


def measure_seed001(backbones: list[str], size: int, batch_size: int, device: torch.device, amp: bool, warmup: int, steps: int) -> list[dict]:
    "One row per (HAM backbone, Table VI row): the baseline RN50-8-LSE and HAM, images/s, ratio to the baseline, projected NIH epoch."
    full, precision, rows = ham.PROFILES['full'], _precision(amp, device), []
    seed_everything(0); batch = seed001_batch(size, batch_size, device)
    for b in backbones:
        rates = {}
        for name in (BASELINE, ham.HAM_ROW):
            rates[name] = _step_rate(lambda: ham.build_ham(name, len(NIH_LABELS), backbone=b, encoder_channels=full['encoder_channels']),
                                     ham.ham_loss(name, z=0.0), ham.ham_step, batch, device, amp, warmup, steps, lr=full['lr'], weight_decay=1e-4)
        base = rates[BASELINE]['img_s']
        for name, r in rates.items():
            rows.append({'backbone': b, 'model': 'HAM' if name == ham.HAM_ROW else 'dilated ResNet (baseline)', 'row': name,
                         'size': size, 'batch_size': batch_size, 'precision': precision, 'img_s': r['img_s'], 'baseline_img_s': base,
                         'ratio': r['img_s'] / base, 'overhead_pct': 100 * (base / r['img_s'] - 1),
                         'nih_epoch_min': NIH_TRAIN_VAL / r['img_s'] / 60, 'peak_mem_gib': r['peak_mem_gib']})
    return rows


SEEDS = {'000': (measure_seed000, list(la.PAPER_MODELS), 'Effusion task training step (seed 000): plain CE vs the attention loss',
                 f'ratio = setting / plain CE images/s (below 1: slower); overhead_pct = extra time per step; '
                 f'effusion_epoch_min = {EFFUSION_TRAIN:,} training images at img_s'),
         '001': (measure_seed001, ['resnet50'], 'HAM training step (seed 001) vs the plain dilated ResNet (RN50-8-LSE)',
                 f'ratio = HAM / baseline images/s (below 1: slower); overhead_pct = extra time per step; '
                 f'nih_epoch_min = {NIH_TRAIN_VAL:,} official train_val images at img_s')}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--seed', required=True, choices=list(SEEDS), help="000: attention loss per backbone; 001: HAM vs dilated ResNet-50")
    ap.add_argument('--backbones', nargs='+', help="seed 000: classifiers (default pvt_v2_b2_li vgg16 resnet50); seed 001: HAM's backbone (default resnet50)")
    ap.add_argument('--size', type=int, help="image size (default: the seed's full profile, 224 or 512)")
    ap.add_argument('--batch-size', type=int, help="batch size (default: the seed's full profile, 32 or 24)")
    timing_arguments(ap, warmup=3, amp=True)
    a = ap.parse_args(argv)
    measure, default_backbones, title, legend = SEEDS[a.seed]
    full = (la if a.seed == '000' else ham).PROFILES['full']
    size, batch_size = a.size or full['image_size'], a.batch_size or full['batch_size']
    device, machine = device_and_machine(a)
    rows = measure(a.backbones or default_backbones, size, batch_size, device, a.amp, a.warmup, a.steps)
    print(f"{title}, images/second ({machine['device']}, {machine['cpus']} CPUs, {machine['torch_threads']} torch threads, "
          f"load average {machine['load_average']:.1f}, torch {torch.__version__}, {a.steps} timed steps after {a.warmup})")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f'{v:.3g}', na_rep='n/a'))
    print(legend)
    if a.json:
        a.json.write_text(json.dumps({'seed': a.seed, 'machine': machine, 'rows': rows}, indent=1))
    return rows


if __name__ == '__main__':
    main()
