"""`cxr-reproduce summary` (cxr_notebooks.reproduce.summary): one page with every paper. The runs it starts, the ones it
keeps, and the page itself opened in headless Chromium from a real seed 002 run (the session grid's)."""
import json, shutil
import pandas as pd
import pytest
from cxr_notebooks.eval.claims import claim_verdict
from cxr_notebooks.metrics.classification import CI
from cxr_notebooks.reproduce import summary as S
from cxr_notebooks.reproduce.cli import main
from cxr_notebooks.reproduce.grid import read_grid_status
from cxr_notebooks.reproduce.kit import RECORD_SCHEMA
from cxr_notebooks.reproduce.runner import repro_notebooks
from conftest import PROBE, browse, console_errors, probed_state


def _record(profile, claim=None, headline=None):
    "A record in the shared schema, as `kit.write_record` writes it."
    return {'schema': RECORD_SCHEMA, 'paper': {'seed': '000', 'title': 't'}, 'notebook': 'x', 'profile': profile, 'seed': 0,
            'setup': f'profile={profile}, seed=0', 'config': {}, 'data': {}, 'results': {'claim': claim} if claim else {},
            'comparisons': {}, 'versions': {}, 'created': '2026-12-07T00:00:00+00:00',
            'headline': headline or {'metric': 'auc', 'value': None, 'low': None, 'high': None, 'note': 'n = 4: too few to measure'}}


def test_runs_what_is_missing_keeps_what_finished_and_reports_failures(tmp_path, monkeypatch):
    calls = []
    def fake_run(pid, folder, params, **kw):
        calls.append((pid, params['profile']))
        if pid == '003': raise ValueError('no data for 003\nsecond line')
        folder.mkdir(parents=True); (folder / 'metrics.json').write_text(json.dumps(_record(params['profile'])))
    monkeypatch.setattr(S, 'run_reproduction', fake_run)
    state = S.run_summary(tmp_path, ['000', '003'])
    nbs = repro_notebooks()
    assert calls == [(p, prof) for p in ('000', '003') for prof in S.SUMMARY_PROFILES if prof in nbs[p].choices['profile']]
    assert state[('000', 'phantom')] == 'ran' and state[('003', 'smoke')] == 'no data for 003'
    calls.clear()
    assert S.run_summary(tmp_path, ['000'])[('000', 'smoke')] == 'kept' and calls == []    # finished runs are not run again
    (S.summary_folder(tmp_path, '000', 'smoke') / 'metrics.json').write_text(json.dumps({'schema': RECORD_SCHEMA}))
    state = S.run_summary(tmp_path, ['000'])                                               # a broken record: said, not overwritten
    assert '000/smoke/metrics.json' in state[('000', 'smoke')] and calls == []
    with pytest.raises(ValueError, match='have no reproduction notebook'): S.run_summary(tmp_path, ['42'])


def test_a_toy_run_and_a_missing_experiment_say_so(tmp_path):
    folder = S.summary_folder(tmp_path, '000', 'smoke'); folder.mkdir(parents=True)
    (folder / 'metrics.json').write_text(json.dumps(_record('smoke')))
    t = S.summary_table(tmp_path, ['000']).iloc[0]
    assert t['smoke'] == 'auc n = 4: too few to measure' and t['verdict'] == '—'
    assert t['phantom'].startswith('cxr-reproduce run 000') and t['full_command'].endswith('-p data_root <NIH ChestX-ray14 folder>')


@pytest.mark.slow
def test_summary_page_in_chromium(smoke_grid, chromium, tmp_path, capsys):
    "A real seed 002 smoke run (kept, not re-run) and a phantom record with its claim: the page shows both, self-contained."
    done = next(r for r in read_grid_status(smoke_grid.out)['runs'] if r['status'] in ('done', 'skipped'))
    shutil.copytree(smoke_grid.out / done['name'], S.summary_folder(tmp_path, '002', 'smoke'))
    claim = claim_verdict('guidance resists a shortcut', 'test AUROC', 'lambda=1', 'guided', CI(0.62, 0.51, 0.72), CI(0.7, 0.6, 0.8),
                          CI(0.08, -0.01, 0.17), 0.08)
    folder = S.summary_folder(tmp_path, '000', 'phantom'); folder.mkdir(parents=True)
    (folder / 'metrics.json').write_text(json.dumps(_record('phantom', claim.as_dict(), {'metric': 'auc', 'value': 0.7, 'low': 0.6, 'high': 0.8})))
    assert main(['summary', '--out', str(tmp_path), '--papers', '000,002']) == 0     # without --run: what the folder holds
    page = tmp_path / 'summary.html'
    assert f"Open {page}" in capsys.readouterr().out
    rec = json.loads((S.summary_folder(tmp_path, '002', 'smoke') / 'metrics.json').read_text())
    t = pd.read_csv(tmp_path / 'summary.csv', dtype=str).set_index('paper')
    probed = tmp_path / 'probed.html'; probed.write_text(page.read_text().replace('<head>', '<head>' + PROBE, 1))
    dom = browse(chromium, probed, tmp_path, '--dump-dom')
    assert dom.returncode == 0 and console_errors(dom.stderr) == [] and probed_state(dom.stdout) == {'errors': [], 'images': 0, 'broken': []}
    text = dom.stdout
    h = rec['headline']                                    # seed 002's smallest grid run: a headline, or why it has none
    assert (h['note'][:60] if h['value'] is None else f"{h['value']:.3f} [{h['low']:.3f}, {h['high']:.3f}]") in text
    assert rec['setup'][:60] in text
    assert 'guidance resists a shortcut' in text and 'not supported' in text and 'includes 0' in text
    assert 'Table 4' in t.loc['002', 'paper_source'] and float(t.loc['002', 'paper_value']) > 0.5
