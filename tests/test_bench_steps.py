"The seed 000/001 training-step benchmark runs at tiny settings on the CPU and writes the expected rows (speed is never asserted)."
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / 'benchmarks' / 'bench_steps.py'
TINY = ['--device', 'cpu', '--size', '32', '--batch-size', '2', '--steps', '1', '--warmup', '1']


def _bench(tmp_path, *args) -> tuple[str, dict]:
    "Run the benchmark with `args` at tiny CPU settings: (stdout, the JSON it wrote)."
    out = tmp_path / 'bench.json'
    r = subprocess.run([sys.executable, str(BENCH), *args, *TINY, '--json', str(out)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    return r.stdout, json.loads(out.read_text())


def _check_machine(report: dict, seed: str):
    assert report['seed'] == seed
    m = report['machine']
    assert m['device'] == 'cpu' and m['cpus'] >= 1 and m['torch_threads'] >= 1 and (m['steps'], m['warmup']) == (1, 1)
    assert isinstance(m['load_average'], float)


@pytest.mark.slow
def test_bench_steps_seed000_tiny_cpu(tmp_path):
    "Every backbone x (plain CE, published, differentiable); ratios are each rate over its backbone's plain-CE rate."
    stdout, report = _bench(tmp_path, '--seed', '000')
    assert '4,746' in stdout and 'cpu, ' in stdout and 'load average' in stdout
    _check_machine(report, '000')
    rows = report['rows']
    assert [(x['backbone'], x['setting'], x['lam'], x['variant']) for x in rows] == [
        (b, s, lam, v) for b in ('pvt_v2_b2_li', 'vgg16', 'resnet50')
        for s, lam, v in (('plain CE (λ=1)', 1.0, 'published'), ('published (λ=0.5)', 0.5, 'published'),
                          ('differentiable (λ=0.5)', 0.5, 'differentiable'))]
    for x in rows:
        plain = next(p['img_s'] for p in rows if p['backbone'] == x['backbone'] and p['lam'] == 1.0)
        assert (x['size'], x['batch_size'], x['precision'], x['peak_mem_gib']) == (32, 2, 'fp32', None)
        assert x['img_s'] > 0 and x['plain_ce_img_s'] == plain
        assert x['ratio'] == pytest.approx(x['img_s'] / plain)
        assert x['overhead_pct'] == pytest.approx(100 * (plain / x['img_s'] - 1))
        assert x['effusion_epoch_min'] == pytest.approx(4_746 / x['img_s'] / 60)
    assert [x['ratio'] for x in rows if x['lam'] == 1.0] == [1.0] * 3


@pytest.mark.slow
def test_bench_steps_seed001_tiny_cpu(tmp_path):
    "The dilated ResNet-50 baseline and HAM; --amp on the CPU is reported as fp32; ratio = HAM / baseline images/s."
    stdout, report = _bench(tmp_path, '--seed', '001', '--amp')
    assert '86,524' in stdout and 'RN50-8-LSE' in stdout
    _check_machine(report, '001')
    base, full = report['rows']
    assert (base['row'], full['row'], base['backbone'], full['backbone']) == ('RN50-8-LSE', 'RN50-8-LSE+FAB+PA+ABU', 'resnet50', 'resnet50')
    for x in (base, full):
        assert (x['size'], x['batch_size'], x['precision'], x['peak_mem_gib']) == (32, 2, 'fp32 (AMP n/a on CPU)', None)
        assert x['img_s'] > 0 and x['baseline_img_s'] == base['img_s']
        assert x['ratio'] == pytest.approx(x['img_s'] / base['img_s'])
        assert x['nih_epoch_min'] == pytest.approx(86_524 / x['img_s'] / 60)
    assert base['ratio'] == 1.0
