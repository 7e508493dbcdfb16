"The training benchmark runs at a tiny size on the CPU and prints/writes the expected table (speed is never asserted)."
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / 'benchmarks' / 'bench_train.py'


@pytest.mark.slow
def test_bench_train_tiny_cpu(tmp_path):
    out = tmp_path / 'bench.json'
    r = subprocess.run([sys.executable, str(BENCH), '--sizes', '32', '--steps', '2', '--warmup', '1', '--batch-size', '2',
                        '--device', 'cpu', '--num-workers', '0', '--json', str(out)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    assert "ratio" in r.stdout and "86,524" in r.stdout and "would hold back" in r.stdout and "external estimates" in r.stdout
    rows = json.loads(out.read_text())['rows']
    assert [(x['size'], x['precision'], x['channels_last']) for x in rows] == [
        (32, 'fp32', False), (32, 'fp32', True), (32, 'n/a (CPU)', False), (32, 'n/a (CPU)', True)]
    for x in rows[:2]:
        assert x['model_img_s'] > 0 and x['loader_model_img_s'] > 0 and x['loader_only_img_s'] > 0
        assert x['ratio'] == pytest.approx(x['loader_model_img_s'] / x['model_img_s'])
        assert x['nih_epoch_min'] == pytest.approx(86_524 / x['loader_model_img_s'] / 60)
    assert all(x['model_img_s'] is None and x['ratio'] is None for x in rows[2:])  # AMP does not apply on the CPU


def test_loader_bounds_names_the_gpus_a_loader_holds_back():
    "Issue 21: which GPUs (at their published rates) a loader of `per_core` img/s per core would bound at 2, 4 and 8 cores."
    sys.path.insert(0, str(BENCH.parent))
    from bench_train import PUBLISHED_GPU_RATES, loader_bounds
    rows = loader_bounds(250.0, gpus={'T4': 400.0, 'A100': 2_000.0, 'H100': 3_000.0})
    assert [(r['cores'], r['loader_img_s'], r['bounds']) for r in rows] == [
        (2, 500.0, ['A100', 'H100']), (4, 1000.0, ['A100', 'H100']), (8, 2000.0, ['H100'])]
    assert loader_bounds(2_000.0)[0]['bounds'] == [] and set(PUBLISHED_GPU_RATES) == {'T4', 'A100', 'H100'}
