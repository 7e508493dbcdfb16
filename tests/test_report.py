"""The grid report (cxr_notebooks.reproduce.report) opened in a real browser: headless Chromium renders the page of a
real seed 002 grid (the session fixture smoke_grid) to PNG and dumps its DOM; no console error, no broken image, no
external resource, and the tables show the runs, their headline numbers with CIs and the paper's column."""
import json, re
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from cxr_notebooks.reproduce.grid import grid_summary
from cxr_notebooks.reproduce.kit import RECORD_SCHEMA
from cxr_notebooks.reproduce.report import comparison_table, delong_between_runs, write_report
from conftest import PROBE, browse, console_errors, probed_state


def test_report_of_a_grid_where_every_run_failed(tmp_path, monkeypatch):
    from cxr_notebooks.reproduce import grid as G
    from cxr_notebooks.reproduce.runner import ReproductionFailed
    def fail(name, out_dir, parameters, **kw): raise ReproductionFailed('CXRDataError', f"no data for {parameters['loss']}", out_dir)
    monkeypatch.setattr(G, 'run_reproduction', fail)
    G.run_grid({'notebook': '002', 'parameters': {'profile': 'smoke'}, 'axes': {'loss': ['bce', 'wfocal']}}, tmp_path, workers=1, progress=False)
    page = write_report(tmp_path)
    html = page.read_text()
    assert 'CXRDataError: no data for bce' in html and 'CXRDataError: no data for wfocal' in html and '<img' not in html
    assert 'No two finished runs share their test images' in html and 'No run has a comparison with the paper' in html
    assert (page.parent / 'delong.md').read_text() == '(none)\n' and len((page.parent / 'runs.csv').read_text().splitlines()) == 3
    with pytest.raises(ValueError, match="roc_run='nope' is not a finished run of this grid; finished: none"):
        write_report(tmp_path, roc_run='nope', out_dir=tmp_path / 'elsewhere')
    assert not (tmp_path / 'elsewhere').exists()   # checked before anything is written


@pytest.mark.slow
def test_report_renders_in_chromium(chromium, smoke_grid, tmp_path):
    page = write_report(smoke_grid.out)
    assert {p.name for p in page.parent.iterdir()} == {'report.html', *(f'{t}.{x}' for t in ('runs', 'paper_vs_reproduced', 'delong')
                                                                         for x in ('csv', 'md'))}
    html = page.read_text()
    assert not re.findall(r'''(?:src|href)\s*=\s*["']?(?!data:|#)[^"'\s>]''', html), "the page must not load anything"
    control = tmp_path / 'control.html'           # the checks below do see a broken image and a script error
    control.write_text(f"<html><head>{PROBE}</head><body><img src='data:image/png;base64,AAAA'><script>nope()</script></body></html>")
    dom = browse(chromium, control, tmp_path, '--dump-dom')
    assert probed_state(dom.stdout) == {'errors': ['Uncaught ReferenceError: nope is not defined', 'failed to load data:image/png;base64,AAAA'], 'images': 1,
                                        'broken': ['data:image/png;base64,AAAA']} and console_errors(dom.stderr)
    probed = tmp_path / 'probed' / 'report.html'   # a copy elsewhere: self-contained means it needs nothing next to it
    probed.parent.mkdir(); probed.write_text(html.replace('<head>', '<head>' + PROBE, 1))
    dom = browse(chromium, probed, tmp_path, '--dump-dom')
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert console_errors(dom.stderr) == []
    s = grid_summary(smoke_grid.out)
    figures = 1 + bool(s['value'].notna().any())   # ROC curves always; metric vs axes only where a headline was measurable
    assert probed_state(dom.stdout) == {'errors': [], 'images': figures, 'broken': []}   # every figure decoded
    text = dom.stdout
    for _, r in s.iterrows():                                  # every run, its headline with CI, or its error
        assert r['run'] in text
        if r['status'] == 'failed': assert r['error'] in text
        elif pd.isna(r['value']): assert r['note'][:60] in text and r['setup'][:60] in text   # too few to measure: said
        else: assert f"{r['value']:.3f} [{r['low']:.3f}, {r['high']:.3f}]" in text and r['setup'][:60] in text
    cmp = comparison_table(smoke_grid.out)
    assert len(cmp) and '<th>paper</th>' in text and 'difference (ours − paper)' in text
    assert f"Paper: {cmp['paper_source'].iloc[0]}" in text and 'Table 4' in text
    assert f"{cmp['paper'].iloc[0]:.3f}" in text
    dl = delong_between_runs(smoke_grid.out)
    assert len(dl) == 6 * 14 and 'loss=bce__optimizer=adam vs loss=bce__optimizer=ranger' in text   # 4 runs share their test images
    shot = tmp_path / 'report.png'
    run = browse(chromium, page, tmp_path, f'--screenshot={shot}', '--window-size=1280,2400', '--hide-scrollbars')
    assert run.returncode == 0 and console_errors(run.stderr) == []
    img = np.asarray(Image.open(shot).convert('L'))
    assert img.shape == (2400, 1280) and img.std() > 10          # a page with content, not a blank or an error page


def _fake_run(name, out_dir, parameters, **kw):
    "A finished run without a notebook: metrics.json in the shared schema; every run but loss=bce names its predictions (not under ours/)."
    out = Path(out_dir); (out / 'model_a').mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(parameters['loss']))
    y = np.array([0, 1] * 10)
    pd.DataFrame({'image': [f'i{k}' for k in range(20)], 'patient_id': range(20), 'y_Effusion': y,
                   'p_Effusion': np.clip(y * 0.3 + rng.random(20) * 0.7, 0, 1)}).to_csv(out / 'model_a' / 'test.csv', index=False)
    rec = {'schema': RECORD_SCHEMA, 'paper': {'seed': '001', 'title': 't', 'source': 's'}, 'notebook': 'x', 'profile': 'phantom',
           'seed': 0, 'setup': f"loss={parameters['loss']}", 'config': {}, 'data': {}, 'results': {}, 'comparisons': {},
           'headline': {'metric': 'mean_auc', 'value': 0.6 + 0.1 * (parameters['loss'] == 'wfocal'), 'low': 0.5, 'high': 0.8},
           'versions': {}, 'created': '2026-12-01T00:00:00+00:00'}
    if parameters['loss'] != 'bce': rec['predictions'] = 'model_a/test.csv'
    (out / 'metrics.json').write_text(json.dumps(rec))


def test_report_reads_the_predictions_a_record_names(tmp_path, monkeypatch):
    "Defect (seed 001/003/004 grids): the report looked only in `ours/predictions_stage*.csv`; the HAM Table VI grid stopped with no ROC run."
    from cxr_notebooks.reproduce import grid as G
    monkeypatch.setattr(G, 'run_reproduction', _fake_run)
    G.run_grid({'notebook': '002', 'parameters': {'profile': 'smoke'}, 'axes': {'loss': ['bce', 'focal', 'wfocal']}}, tmp_path, workers=1, progress=False)
    page = write_report(tmp_path).read_text()
    assert 'ROC curves: loss=wfocal' in page and 'model_a/test.csv' in page
    dl = delong_between_runs(tmp_path)
    assert set(map(tuple, dl[['run_a', 'run_b']].to_numpy())) == {('loss=focal', 'loss=wfocal')}
    with pytest.raises(ValueError, match="roc_run='loss=bce' has no test predictions"):
        write_report(tmp_path, roc_run='loss=bce')


def test_report_names_a_corrupt_record_or_missing_predictions_and_reports_the_others(tmp_path, monkeypatch):
    "Defect: one corrupt metrics.json, or a record naming predictions that are gone, stopped the whole report with a traceback."
    from cxr_notebooks.reproduce import grid as G
    monkeypatch.setattr(G, 'run_reproduction', _fake_run)
    G.run_grid({'notebook': '002', 'parameters': {'profile': 'smoke'}, 'axes': {'loss': ['bce', 'focal', 'wfocal', 'cb-bce']}},
               tmp_path, workers=1, progress=False)
    (tmp_path / 'loss=focal' / 'metrics.json').write_text('{"schema": ')
    (tmp_path / 'loss=cb-bce' / 'model_a' / 'test.csv').unlink()
    page = write_report(tmp_path).read_text()
    assert f"{tmp_path / 'loss=focal' / 'metrics.json'} does not parse" in page
    assert f"loss=cb-bce: its record names {tmp_path / 'loss=cb-bce' / 'model_a' / 'test.csv'}, which is missing" in page
    assert 'ROC curves: loss=wfocal' in page and '0.700 [0.500, 0.800]' in page and '0.600 [0.500, 0.800]' in page   # the others
    s = grid_summary(tmp_path)
    assert s.set_index('run').loc['loss=focal', 'status'] == 'unreadable'
    (tmp_path / 'grid.json').write_text('{"runs": [')
    with pytest.raises(ValueError, match=r"grid.json does not parse .*re-run the grid's spec"): write_report(tmp_path)


def test_a_headline_too_few_to_measure_shows_the_note_not_numbers(tmp_path, monkeypatch):
    "Issue 17: a run whose test part is below the minimum has no CI; the record passes, the grid and the report say why instead of numbers."
    from cxr_notebooks.reproduce import grid as G
    note = 'n = 4 (1 positive, 3 negative): too few to measure (a CI needs at least 20 of each)'
    def run(name, out_dir, parameters, **kw):
        _fake_run(name, out_dir, parameters)
        if parameters['loss'] == 'focal':
            f = Path(out_dir) / 'metrics.json'; rec = json.loads(f.read_text())
            rec['headline'] = {'metric': 'mean_auc', 'value': None, 'low': None, 'high': None, 'n_classes': 0, 'note': note}
            f.write_text(json.dumps(rec))
    monkeypatch.setattr(G, 'run_reproduction', run)
    G.run_grid({'notebook': '002', 'parameters': {'profile': 'smoke'}, 'axes': {'loss': ['bce', 'focal']}}, tmp_path, workers=1, progress=False)
    s = G.grid_summary(tmp_path).set_index('run')
    assert s.loc['loss=focal', 'status'] == 'done' and s.loc['loss=focal', 'note'] == note   # check_record accepted it
    assert pd.isna(s.loc['loss=focal', ['value', 'low', 'high']]).all() and pd.isna(s.loc['loss=bce', 'note'])
    page = write_report(tmp_path).read_text()
    assert note in page and '0.600 [0.500, 0.800]' in page
