"""Grids of reproduction runs (cxr_notebooks.reproduce.grid): the spec, run names, the sequential path's
bookkeeping with a stand-in runner (fast), and a real 2 x 2 grid of seed 002 on a local Ray (slow)."""
import json
from pathlib import Path
import pytest
import yaml
from cxr_notebooks.reproduce import grid as G
from cxr_notebooks.reproduce import kit
from cxr_notebooks.reproduce.runner import ReproductionFailed, RunConfigMismatch, check_run_config

ROOT = Path(__file__).parents[1]
SMOKE = {'profile': 'smoke', 'epochs': 1, 'image_size': 32}


def write_spec(folder: Path, spec: dict, name: str = 'g.yaml') -> Path:
    p = folder / name; p.write_text(yaml.safe_dump(spec)); return p


# --- the spec ---

def test_example_specs_parse_and_plan():
    for f in sorted((ROOT / 'grids').glob('*.yaml')):
        spec = G.read_grid_spec(f)
        runs = G.plan_grid(spec)   # every run's parameters pass the runner's check
        n_axes = 1
        for values in spec.axes.values(): n_axes *= len(values)
        assert spec.name == f.stem and len(runs) == (n_axes if spec.axes else 0) + len(spec.runs), f
        if f.stem.startswith('002_'): assert runs[-1].name == 'loss=wfocal__optimizer=ranger', f


def test_spec_errors_name_the_file_and_key(tmp_path):
    with pytest.raises(ValueError, match=r"g.yaml: unknown key 'parameter' \(did you mean 'parameters'\?\)"):
        G.read_grid_spec(write_spec(tmp_path, {'notebook': '002', 'parameter': {}}))
    with pytest.raises(ValueError, match=r"g.yaml: axes.loss must be a non-empty list"):
        G.read_grid_spec(write_spec(tmp_path, {'notebook': '002', 'axes': {'loss': []}}))
    with pytest.raises(ValueError, match=r"'runs' must be a list"):
        G.read_grid_spec(write_spec(tmp_path, {'notebook': '002', 'runs': {'loss': 'bce'}}))
    with pytest.raises(ValueError, match=r"axes.loss repeats a value"):
        G.read_grid_spec(write_spec(tmp_path, {'notebook': '002', 'axes': {'loss': ['bce', 'bce']}}))
    with pytest.raises(ValueError, match="does not exist"): G.read_grid_spec(tmp_path / 'none.yaml')
    (tmp_path / 'bad.yaml').write_text('notebook: [002\n')
    with pytest.raises(ValueError, match="bad.yaml does not parse"): G.read_grid_spec(tmp_path / 'bad.yaml')
    (tmp_path / 'g.txt').write_text('notebook: 002')
    with pytest.raises(ValueError, match="expected a .yaml, .yml or .json file"): G.read_grid_spec(tmp_path / 'g.txt')


def test_json_spec_and_paths_relative_to_the_spec_file(tmp_path):
    (tmp_path / 'specs').mkdir()
    f = tmp_path / 'specs' / 'g.json'
    f.write_text(json.dumps({'notebook': 2, 'parameters': SMOKE, 'runs': [{'split': 'mine.csv'}, {'split': 'official'}]}))
    runs = G.plan_grid(G.read_grid_spec(f))
    assert [r.parameters['split'] for r in runs] == [str(tmp_path / 'specs' / 'mine.csv'), 'official']
    assert [r.name for r in runs] == ['split=mine.csv', 'split=official']


def test_every_run_is_checked_before_any_runs(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(G, 'run_reproduction', lambda *a, **k: calls.append(a))
    spec = {'notebook': '002', 'parameters': SMOKE, 'axes': {'loss': ['bce', 'wfocal', 'wfocall']}}
    with pytest.raises(ValueError, match=r"run loss=wfocall: .*parameter loss: expected one of .* got 'wfocall'"):
        G.run_grid(spec, tmp_path / 'g', workers=1, progress=False)
    assert calls == [] and not (tmp_path / 'g').exists()


def test_run_names_are_stable_and_safe():
    assert G.run_name({'loss': 'cb-bce', 'focal_gamma': 2.0}) == 'loss=cb-bce__focal_gamma=2.0'
    odd = G.run_name({'split': '../my splits/a:b.csv'})
    assert odd == G.run_name({'split': '../my splits/a:b.csv'}) and '/' not in odd and ' ' not in odd and ':' not in odd
    assert odd != G.run_name({'split': '.._my_splits_a_b.csv'})


def test_worker_arguments():
    with pytest.raises(ValueError, match="workers=0"): G.run_grid({'notebook': '002'}, workers=0)
    with pytest.raises(ValueError, match="workers=2 sizes a local Ray; on the cluster at auto"):
        G.run_grid({'notebook': '002'}, workers=2, address='auto')


@pytest.mark.slow
def test_resources_a_local_ray_lacks_fail_at_once(tmp_path):
    spec = {'notebook': '002', 'parameters': SMOKE, 'resources': {'num_cpus': 10_000}}
    with pytest.raises(ValueError, match="each run needs 10000 CPU but this Ray has "):
        G.run_grid(spec, tmp_path, workers=None, progress=False)
    import ray
    assert not ray.is_initialized()   # the Ray it started is shut down


# --- the sequential path's bookkeeping, with a stand-in runner ---

class FakeRunner:
    "Writes what a run writes (run config, a valid record); 'focal' fails like a notebook, 'cb-bce' like the runner."
    def __init__(self): self.calls = []
    def __call__(self, name, out_dir, parameters, html=True, progress=True, cwd=None):
        self.calls.append(Path(out_dir).name); out = Path(out_dir)
        check_run_config(out, G._result_parameters(parameters))
        if parameters.get('loss') == 'focal': raise ReproductionFailed('CXRDataError', 'no positives\n  more detail', out / 'nb.ipynb')
        if parameters.get('loss') == 'cb-bce': raise FileNotFoundError('weights.pt is missing')
        rec = {'schema': kit.RECORD_SCHEMA, 'paper': {}, 'notebook': '002', 'profile': 'smoke', 'seed': 0, 'setup': 's', 'config': {},
               'data': {}, 'headline': {'metric': 'mean_auc', 'value': 0.6, 'low': 0.5, 'high': 0.7}, 'results': {},
               'comparisons': {}, 'versions': {}, 'created': ''}
        (out / 'metrics.json').write_text(json.dumps(rec))
        return out / 'nb.ipynb'


@pytest.fixture
def fake(monkeypatch):
    f = FakeRunner(); monkeypatch.setattr(G, 'run_reproduction', f); return f


def test_sequential_grid_records_and_resumes(tmp_path, fake):
    spec = {'notebook': '002', 'parameters': SMOKE, 'axes': {'loss': ['bce', 'focal', 'cb-bce', 'wfocal']}}
    res = G.run_grid(spec, tmp_path, workers=1, progress=False)
    assert [(r.name, r.status) for r in res.runs] == [('loss=bce', 'done'), ('loss=focal', 'failed'), ('loss=cb-bce', 'failed'),
                                                      ('loss=wfocal', 'done')]   # a failure never stops the others
    assert [r.error for r in res.failed] == ['CXRDataError: no positives', 'FileNotFoundError: weights.pt is missing']
    status = json.loads((tmp_path / 'grid.json').read_text())
    assert status['name'] == tmp_path.name and status['axes'] == {'loss': ['bce', 'focal', 'cb-bce', 'wfocal']}
    assert [(r['name'], r['status'], r['error'] is None) for r in status['runs']] == \
           [('loss=bce', 'done', True), ('loss=focal', 'failed', False), ('loss=cb-bce', 'failed', False), ('loss=wfocal', 'done', True)]
    assert all(r['seconds'] >= 0 for r in status['runs']) and status['runs'][0]['parameters'] == {**SMOKE, 'loss': 'bce'}
    fake.calls.clear()
    res = G.run_grid(spec, tmp_path, workers=1, progress=False)
    assert [r.status for r in res.runs] == ['skipped', 'failed', 'failed', 'skipped'] and fake.calls == ['loss=focal', 'loss=cb-bce']
    assert res.runs[0].seconds == status['runs'][0]['seconds']   # a skipped run keeps what it took when it ran


def test_changed_shared_parameter_stops_before_touching_grid_json(tmp_path, fake):
    "Defect: a changed shared parameter relabelled the finished runs as failed in grid.json; it must stop like a single run."
    spec = {'notebook': '002', 'parameters': SMOKE, 'axes': {'loss': ['bce', 'wfocal']}}
    G.run_grid(spec, tmp_path, workers=1, progress=False)
    before = {f: (tmp_path / f).read_bytes() for f in ('grid.json', 'loss=bce/metrics.json', 'loss=bce/run_config.json')}
    fake.calls.clear()
    with pytest.raises(RunConfigMismatch) as e:
        G.run_grid({**spec, 'parameters': {**SMOKE, 'epochs': 2}}, tmp_path, workers=1, progress=False)
    msg = str(e.value)
    assert msg.startswith(f"grid {tmp_path.name}: 2 run folder(s) hold runs with other parameters") and 'epochs: 1 there, 2 now' in msg
    assert 'loss=bce' in msg and 'loss=wfocal' in msg and 'nothing was run' in msg
    assert fake.calls == [] and {f: (tmp_path / f).read_bytes() for f in before} == before


def test_dropped_parameter_or_broken_record_is_not_skipped(tmp_path, fake):
    spec = {'notebook': '002', 'parameters': {**SMOKE, 'lr': 0.01}}
    G.run_grid(spec, tmp_path, workers=1, progress=False)
    params = G.plan_grid(G.read_grid_spec(spec))[0].parameters
    assert G.run_state(tmp_path / 'base', params) == ('finished', None)
    # lr dropped from the spec: the stored config agrees on what is passed, but the grid saw other parameters -> run again
    assert G.run_state(tmp_path / 'base', {k: v for k, v in params.items() if k != 'lr'}) == ('todo', None)
    (tmp_path / 'base' / 'metrics.json').write_text('{"schema": "other"}')
    assert G.run_state(tmp_path / 'base', params) == ('todo', None)
    assert G.run_state(tmp_path / 'nothing', params) == ('todo', None)


def test_grid_summary(tmp_path, fake):
    G.run_grid({'notebook': '002', 'parameters': SMOKE, 'axes': {'loss': ['bce', 'focal']}}, tmp_path, workers=1, progress=False)
    s = G.grid_summary(tmp_path)
    assert list(s['run']) == ['loss=bce', 'loss=focal'] and list(s['loss']) == ['bce', 'focal']
    assert s.loc[0, ['value', 'low', 'high', 'status']].tolist() == [0.6, 0.5, 0.7, 'done']
    assert s.loc[1, 'error'] == 'CXRDataError: no positives'
    with pytest.raises(FileNotFoundError, match="cxr-reproduce grid SPEC"): G.grid_summary(tmp_path / 'nothing')


def test_a_moved_grid_folder_still_reads(tmp_path, fake):
    import shutil
    G.run_grid({'notebook': '002', 'parameters': SMOKE, 'axes': {'loss': ['bce']}}, tmp_path / 'a', workers=1, progress=False)
    shutil.move(tmp_path / 'a', tmp_path / 'b')
    s = G.grid_summary(tmp_path / 'b')
    assert s.loc[0, 'value'] == 0.6 and s.loc[0, 'folder'] == str(tmp_path / 'b' / 'loss=bce')


# --- a real grid on a local Ray (the session fixture smoke_grid runs it once) ---

@pytest.mark.slow
def test_real_grid_on_ray(smoke_grid):
    res = smoke_grid.result
    names = ['loss=bce__optimizer=adam', 'loss=bce__optimizer=ranger', 'loss=wfocal__optimizer=adam', 'loss=wfocal__optimizer=ranger',
             'split=chexnet']
    assert [r.name for r in res.runs] == names
    assert [r.status for r in res.runs] == ['done'] * 4 + ['failed']
    err = res.runs[-1].error
    assert err.startswith("CXRDataError: split='chexnet' leaves the ['val'] part(s) empty") and '\n' not in err
    for r in res.runs[:4]:
        folder = smoke_grid.out / r.name
        kit.check_record(json.loads((folder / 'metrics.json').read_text()))
        config = json.loads((folder / 'run_config.json').read_text())
        assert (config['loss'], config['optimizer'], config['max_images']) == (r.varying['loss'], r.varying['optimizer'], 120)
        assert (folder / 'ours' / 'predictions_stage1.csv').is_file() and (folder / G.GRID_PARAMETERS).is_file()
    status = json.loads((smoke_grid.out / 'grid.json').read_text())
    assert [(r['name'], r['status']) for r in status['runs']] == [(n, s) for n, s in zip(names, ['done'] * 4 + ['failed'])]
    print(f"grid of 5 runs on Ray: {smoke_grid.seconds:.0f} s")


@pytest.mark.slow
def test_real_grid_resumes_without_rerunning(smoke_grid):
    out, done = smoke_grid.out, [r.name for r in smoke_grid.result.runs[:4]]
    files = [out / n / f for n in done for f in ('metrics.json', '002_aggregate_method.ipynb', 'run_config.json')]
    stamps = [f.stat().st_mtime_ns for f in files]
    # a changed shared parameter: every folder holds another run; stops naming it, starting nothing, grid.json untouched
    changed = {**smoke_grid.spec, 'parameters': {**smoke_grid.spec['parameters'], 'epochs': 2}}
    status = (out / 'grid.json').read_bytes()
    with pytest.raises(RunConfigMismatch, match='epochs: 1 there, 2 now'): G.run_grid(changed, out, workers=2, progress=False)
    assert (out / 'grid.json').read_bytes() == status
    # the original spec again: the four finished runs are skipped, the failed one is tried again (and fails again)
    res = G.run_grid(smoke_grid.spec, out, workers=2, progress=False)
    assert [r.status for r in res.runs] == ['skipped'] * 4 + ['failed'] and res.runs[-1].error == smoke_grid.result.runs[-1].error
    assert [f.stat().st_mtime_ns for f in files] == stamps          # no notebook of the four ran again
    assert [r['status'] for r in json.loads((out / 'grid.json').read_text())['runs']] == ['skipped'] * 4 + ['failed']
