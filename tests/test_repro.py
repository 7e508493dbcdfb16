"""Smoke runs of the seed 002 reproduction notebook through papermill at the smallest settings:
the `make demo` path (official split, baseline) and the aggregate method (CheXNet split, weighted
focal loss, Ranger, two stages, DeLong against a trained baseline)."""
import json
import pandas as pd
import pytest
from cxr_notebooks.reproduce.runner import run_reproduction, main
from cxr_notebooks.reproduce.reference import reference_values

TINY = dict(profile='smoke', image_size=32, epochs=1, batch_size=16, max_images=160, n_bootstrap=20, num_workers=0, pretrained=False)


def test_baseline_smoke_run(tmp_path):
    "The demo configuration runs end to end and writes its record, figures and paper table."
    nb = run_reproduction('002', tmp_path, TINY, progress=False)
    assert nb.with_suffix('.html').is_file()
    rec = json.loads((tmp_path / 'metrics.json').read_text())
    assert rec['setup'].startswith('profile=smoke') and 'seed=0' in rec['setup']
    assert set(rec['split_sizes']) == {'train', 'val', 'test'} and sum(rec['split_sizes'].values()) == 160
    assert len(rec['history']['epoch']) == 1
    for f in ('roc_curves.png', 'training_curves.png', 'data_summary.csv', 'ours/stage1/last.pt'):
        assert (tmp_path / f).is_file(), f
    table = pd.read_csv(tmp_path / 'paper_vs_reproduced_table4.csv')
    paper = reference_values('002', 'Table 4', 'baseline reproduce ChexNet [15]')
    row = table.set_index('label').loc['Cardiomegaly']
    assert row['paper'] == pytest.approx(paper['Cardiomegaly'])


def test_aggregate_method_smoke_run(tmp_path):
    "Weighted focal loss + Ranger + progressive resizing, compared with a baseline trained alongside (DeLong)."
    run_reproduction('002', tmp_path, {**TINY, 'loss': 'wfocal', 'optimizer': 'ranger', 'stages': 2,
                                       'backbone': 'mobilenetv2_100', 'max_images': None}, html=False, progress=False)
    rec = json.loads((tmp_path / 'metrics.json').read_text())
    assert rec['history']['image_size'] == [32, 64] and rec['history']['stage'] == [1, 2]
    delong = pd.read_csv(tmp_path / 'delong_vs_baseline.csv')
    assert list(delong.columns) == ['label', 'auc_baseline', 'auc_ours', 'difference', 'z', 'p_value']
    tested = delong.dropna()
    assert len(tested) > 0 and tested['p_value'].between(0, 1).all()
    assert (tmp_path / 'baseline' / 'predictions_stage2.csv').is_file()


def test_chexnet_split_on_the_sample_says_why_it_cannot_train(tmp_path):
    "621 of the 646 embedded images are in the CheXNet test list: the notebook stops with a clear error."
    from papermill.exceptions import PapermillExecutionError
    with pytest.raises(PapermillExecutionError, match='part\\(s\\) empty'):
        run_reproduction('002', tmp_path, {**TINY, 'split': 'chexnet', 'max_images': None}, html=False, progress=False)


def test_cli_rejects_unknown_notebook(tmp_path):
    with pytest.raises(KeyError, match='known'):
        main(['run', '999', '--out', str(tmp_path)])
