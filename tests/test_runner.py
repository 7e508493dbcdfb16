"""The runner refuses what cannot run before a kernel starts (declared ranges, booleans, paths, the run folder, a
changed configuration), never lets a failed or refused run replace a finished one, streams one line per epoch, and
answers Ctrl-C in one line (issue 18, issue 22 items 3 and 5). Fast tests start no kernel; the slow ones run a tiny
stand-in reproduction notebook (a second or two each) rather than a paper's."""
import json, math, os, re, signal, subprocess, sys, time
from pathlib import Path
import nbformat
import pytest
from cxr_notebooks.reproduce.cli import main
from cxr_notebooks.reproduce.runner import (INPUT_FINGERPRINTS, ParameterRange, ReproductionFailed, RunConfigMismatch, check_parameters,
                                           check_resume, check_run_config, notebook_parameters, repro_notebooks, run_reproduction)

ROOT = Path(__file__).parents[1]
NOTEBOOKS = repro_notebooks()
CLI = [sys.executable, '-m', 'cxr_notebooks.reproduce.cli']


def _cli_error(capsys, *argv) -> str:
    t0 = time.time()
    assert main(list(argv)) == 1
    err = capsys.readouterr().err
    assert err.startswith('cxr-reproduce: error: ') and 'Traceback' not in err
    assert time.time() - t0 < 30   # refused before any kernel starts (a kernel run takes minutes)
    return err


# ---- declared ranges (issue 18 items 1 and 2) --------------------------------------------------------------------

def test_epochs_zero_is_refused_before_any_kernel(tmp_path, capsys):
    "Defect: `-p epochs 0` exited 0 with metrics.json and a paper comparison for a model never trained."
    err = _cli_error(capsys, 'run', '002', '--out', str(tmp_path), '-p', 'epochs', '0')
    assert 'parameter epochs: 0 is outside its range; expected a number in [1, inf)' in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize('seed,name,value,rng', [
    ('001', 'attention_threshold', 5, '(0, 1)'), ('002', 'lr', -1, '(0, 1]'), ('002', 'image_size', 0, '[32, inf)'),
    ('004', 'fraction', 0.001, '[0.01, 1]'), ('000', 'n_images', 0, '[40, inf)'), ('002', 'max_images', 0, '[100, inf)'),
    ('004', 'grad_accum_steps', 0, '[1, inf)'), ('003', 'n_bootstrap', 1, '[20, inf)')])
def test_values_outside_the_declared_range_are_refused(seed, name, value, rng):
    "Defect: these failed 20-50 s later inside the kernel with torch/OpenCV/NumPy errors, or ran (threshold 5: accuracy 0.0)."
    with pytest.raises(ValueError, match=re.escape(f'parameter {name}: {value!r} is outside its range; expected a number in {rng}')):
        check_parameters(NOTEBOOKS[seed], {name: value})


def test_nan_is_refused(tmp_path, capsys):
    err = _cli_error(capsys, 'run', '002', '--out', str(tmp_path), '-p', 'lr', 'NaN')
    assert 'parameter lr: NaN is not a number; expected a number in (0, 1]' in err


@pytest.mark.parametrize('seed', sorted(NOTEBOOKS))
def test_every_numeric_parameter_declares_a_range_that_holds_its_defaults(seed):
    nb = NOTEBOOKS[seed]
    spec = notebook_parameters(nb.path)
    numeric = [k for k, p in spec.items() if p['type'] in ('int', 'float')]
    assert [k for k in numeric if k not in nb.ranges and k not in nb.choices] == []
    assert set(nb.ranges) <= set(spec)
    for k in nb.ranges:
        default = json.loads(spec[k]['default'].replace('None', 'null'))
        assert default is None or default in nb.ranges[k], (k, default)
        assert nb.smallest.get(k) is None or nb.smallest[k] in nb.ranges[k], k


def test_range_syntax():
    r = ParameterRange.parse('(0, 1]')
    assert (0 in r, 0.5 in r, 1 in r, 1.01 in r, math.nan in r) == (False, True, True, False, False) and str(r) == '(0, 1]'
    r = ParameterRange.parse('[1,inf)')
    assert 1 in r and 10**9 in r and 0 not in r and math.inf not in r and str(r) == '[1, inf)'
    for bad in ('1..2', '[2, 1]', '[a, 1]', '(0, 1', '[nan, 1]'):
        with pytest.raises(ValueError, match='expected an interval'): ParameterRange.parse(bad)


def test_a_bad_range_in_the_metadata_names_the_notebook_and_parameter(tmp_path):
    nb = _tiny_notebook(tmp_path, ranges={'steps': '[1, 0]'})
    from cxr_notebooks.reproduce.runner import declared_notebook
    with pytest.raises(ValueError, match=r'tiny.ipynb: metadata cxr_notebooks.ranges.steps: range'): declared_notebook(nb)


# ---- booleans as people write them (issue 22 item 5) -------------------------------------------------------------

def test_booleans_are_read_as_people_write_them(tmp_path, capsys):
    nb = NOTEBOOKS['002']
    for text, value in (('False', False), ('false', False), ('no', False), ('0', False), ('True', True), ('yes', True), ('1', True)):
        from cxr_notebooks.reproduce.cli import _parse_value
        assert check_parameters(nb, {'pretrained': _parse_value(text)}) == {'pretrained': value}, text
    err = _cli_error(capsys, 'run', '002', '--out', str(tmp_path), '-p', 'pretrained', 'maybe')
    assert "parameter pretrained: expected bool, got str 'maybe' (write -p pretrained true or -p pretrained false)" in err


# ---- what a run needs, checked before a kernel starts ("clear messages") -------------------------------------------

def test_a_library_notebook_is_refused(tmp_path, capsys):
    err = _cli_error(capsys, 'run', str(ROOT / 'nbs' / 'reproduce' / '92_runner.ipynb'), '--out', str(tmp_path))
    assert '92_runner.ipynb is not a reproduction notebook' in err and '002 (Nugroho' in err


def test_out_dir_given_twice_must_agree(tmp_path, capsys):
    err = _cli_error(capsys, 'run', '002', '--out', str(tmp_path / 'a'), '-p', 'out_dir', str(tmp_path / 'b'))
    assert f"-p out_dir {tmp_path / 'b'} conflicts with --out {tmp_path / 'a'}" in err
    assert not (tmp_path / 'a').exists() and not (tmp_path / 'b').exists()


def test_a_missing_weights_file_is_said_on_the_terminal(tmp_path, capsys):
    "Defect: a missing weights file was reported only inside the notebook."
    err = _cli_error(capsys, 'run', '002', '--out', str(tmp_path / 'run'), '-p', 'weights', str(tmp_path / 'densenet.pth'))
    assert f"parameter weights: {tmp_path / 'densenet.pth'} does not exist" in err and not (tmp_path / 'run').exists()


def test_an_unwritable_out_is_refused(tmp_path, capsys):
    (tmp_path / 'afile').write_text('x')
    err = _cli_error(capsys, 'run', '002', '--out', str(tmp_path / 'afile' / 'run'))
    assert f"--out {tmp_path / 'afile' / 'run'} cannot be written" in err


@pytest.mark.skipif(hasattr(os, 'geteuid') and os.geteuid() == 0, reason='root writes into read-only folders')
def test_a_read_only_out_is_refused(tmp_path, capsys):
    ro = tmp_path / 'ro'; ro.mkdir(); ro.chmod(0o500)
    try: assert f"--out {ro} cannot be written" in _cli_error(capsys, 'run', '002', '--out', str(ro))
    finally: ro.chmod(0o700)


# ---- a refused re-run touches nothing; an edited input file is a changed parameter (items 3 and 4) ------------------

def _finished_run(folder: Path, config: dict) -> dict:
    "A stand-in finished seed 002 run: its config, executed notebook, HTML and record; returns file -> bytes."
    folder.mkdir(parents=True, exist_ok=True)
    check_run_config(folder, config)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('1', execution_count=1)])
    nb.metadata['papermill'] = {'exception': None, 'end_time': 'x'}
    nbformat.write(nb, str(folder / '002_aggregate_method.ipynb'))
    (folder / '002_aggregate_method.html').write_text('<html>finished</html>')
    (folder / 'metrics.json').write_text('{"finished": true}')
    return {f.name: f.read_bytes() for f in folder.iterdir()}


def test_a_refused_rerun_stops_before_the_kernel_and_overwrites_nothing(tmp_path, capsys):
    "Defect: a refused re-run into a finished run's --out overwrote its executed notebook and HTML with the failed attempt."
    before = _finished_run(tmp_path, {'profile': 'smoke', 'lr': 0.001, 'max_images': 160})
    err = _cli_error(capsys, 'run', '002', '--out', str(tmp_path), '-p', 'lr', '0.5', '-p', 'max_images', '160')
    assert 'lr: 0.001 there, 0.5 now' in err and 'another output folder' in err
    assert {f.name: f.read_bytes() for f in tmp_path.iterdir()} == before


def test_an_edited_split_file_is_a_changed_parameter(tmp_path, capsys):
    "Defect: `-p split mine.csv`, edit the file, re-run: the old checkpoint (trained on today's test images) was reused."
    split = tmp_path / 'mine.csv'; split.write_text('image,split\na.png,train\nb.png,test\n')
    run = tmp_path / 'run'
    _finished_run(run, {'profile': 'smoke', 'split': str(split)})
    stored = json.loads((run / 'run_config.json').read_text())
    import hashlib
    assert stored[INPUT_FINGERPRINTS] == {'split': hashlib.sha256(b'mine.csv\0' + split.read_bytes()).hexdigest()}
    check_resume(run, {'split': str(split), 'lr': None})   # unchanged: resumes
    split.write_text('image,split\na.png,test\nb.png,train\n')
    with pytest.raises(RunConfigMismatch, match="the contents of split's file changed"): check_resume(run, {'split': str(split)})
    err = _cli_error(capsys, 'run', '002', '--out', str(run), '-p', 'profile', 'smoke', '-p', 'split', str(split))
    assert "the contents of split's file changed" in err


def test_a_data_folder_is_fingerprinted_by_its_tables_not_its_images(tmp_path):
    d = tmp_path / 'nih'; d.mkdir(); (d / 'Data_Entry_2017.csv').write_text('a\n1\n'); (d / 'x.png').write_bytes(b'1')
    check_run_config(tmp_path / 'run', {'data_root': str(d)})
    (d / 'y.png').write_bytes(b'2'); check_resume(tmp_path / 'run', {'data_root': str(d)})   # a new image: same tables
    (d / 'Data_Entry_2017.csv').write_text('a\n2\n')
    with pytest.raises(RunConfigMismatch, match="data_root's file changed"): check_resume(tmp_path / 'run', {'data_root': str(d)})


# ---- list: the smallest setting and measured times (issue 22 item 3) -----------------------------------------------

def test_list_prints_each_notebooks_smallest_setting_and_times(capsys):
    assert main(['list']) == 0
    out = capsys.readouterr().out
    for s, nb in NOTEBOOKS.items():
        assert f'smallest: cxr-reproduce run {s} --out DIR -p profile {nb.smallest["profile"]}' in out
        assert nb.timing.get('machine') and nb.timing['smallest']['wall_s'] > 0, s
    assert out.count('time on ') == len(NOTEBOOKS) and 'epochs             int    = None           in [1, inf)' in out


# ---- a tiny stand-in reproduction notebook: kernel runs in a second or two --------------------------------------------

TINY = '''import time
for e in range(1, steps + 1):
    print(f"ours/stage1 epoch {e}/{steps}: train_loss {1 / e:.3f}", flush=True)   # the Learner's per-epoch line
    print("a table nobody asked to see")
    time.sleep(sleep)
if fail: raise ValueError("asked to fail")
open(out_dir + '/metrics.json', 'w').write('{}')'''


def _tiny_notebook(folder: Path, **meta) -> Path:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("steps: int = 2  # epochs\nsleep: float = 0.0  # seconds per epoch\n"
                                       "fail: bool = False  # raise at the end\nout_dir: str = 'runs/t'  # run folder")
    params.metadata['tags'] = ['parameters']
    nb.cells = [params, nbformat.v4.new_code_cell(TINY)]
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    nb.metadata['cxr_notebooks'] = {'seed': 't', 'title': 'tiny', 'ranges': {'steps': '[1, inf)', 'sleep': '[0, inf)'}, **meta}
    p = folder / 'tiny.ipynb'; nbformat.write(nb, str(p)); return p


@pytest.mark.slow
def test_a_failed_run_never_replaces_a_finished_one(tmp_path):
    nb = _tiny_notebook(tmp_path)
    out = run_reproduction(nb, tmp_path / 'run', {}, progress=False)
    files = lambda: {f.name: f.read_bytes() for f in (tmp_path / 'run').iterdir() if f.name in ('tiny.ipynb', 'tiny.html')}
    before = files()
    assert set(before) == {'tiny.ipynb', 'tiny.html'}
    with pytest.raises(ReproductionFailed) as e: run_reproduction(nb, tmp_path / 'run', {'fail': True}, progress=False)
    assert e.value.evalue == 'asked to fail' and e.value.notebook == tmp_path / 'run' / 'tiny.failed.ipynb'
    assert files() == before   # the finished run is intact
    assert (tmp_path / 'run' / 'tiny.failed.html').is_file() and not list((tmp_path / 'run').glob('.tiny.running*'))
    # a first run that fails leaves its notebook under the usual name (there is nothing finished to keep)
    with pytest.raises(ReproductionFailed) as e: run_reproduction(nb, tmp_path / 'fresh', {'fail': True}, progress=False)
    assert e.value.notebook == tmp_path / 'fresh' / 'tiny.ipynb' and e.value.notebook.is_file() and out.is_file()


@pytest.mark.slow
def test_one_line_per_epoch_is_streamed_while_the_notebook_runs(tmp_path, capsys):
    run_reproduction(_tiny_notebook(tmp_path), tmp_path / 'run', {'steps': 3}, html=False)
    out = capsys.readouterr().out
    assert [l.strip() for l in out.splitlines() if 'epoch' in l and 'loss' in l] == \
           ['ours/stage1 epoch 1/3: train_loss 1.000', 'ours/stage1 epoch 2/3: train_loss 0.500', 'ours/stage1 epoch 3/3: train_loss 0.333']
    assert 'a table nobody asked to see' not in out and 'Executing' not in out   # no other output, no papermill bar


def _interrupt(argv: list, cwd: Path, wait_for: str) -> subprocess.CompletedProcess:
    "Start the CLI in its own process group, wait until its stdout shows `wait_for`, press Ctrl-C (SIGINT to the group)."
    p = subprocess.Popen([*CLI, *argv], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines = []
    for line in p.stdout:
        lines.append(line)
        if wait_for in line: break
    os.killpg(p.pid, signal.SIGINT)
    out, err = p.communicate(timeout=120)
    return subprocess.CompletedProcess(p.args, p.returncode, ''.join(lines) + out, err)


@pytest.mark.slow
def test_ctrl_c_of_a_run_is_one_line(tmp_path):
    "Defect: Ctrl-C printed 40-69 lines of KeyboardInterrupt through asyncio."
    r = _interrupt(['run', str(_tiny_notebook(tmp_path)), '--out', 'run', '-p', 'steps', '100', '-p', 'sleep', '0.5'], tmp_path, 'epoch 2/')
    assert r.returncode == 130, r.stderr
    assert r.stderr.strip().splitlines() == ['cxr-reproduce: interrupted; re-run the same command to resume from the last checkpoint']
    assert sorted(f.name for f in (tmp_path / 'run').iterdir()) == ['tiny.failed.html', 'tiny.failed.ipynb']   # never the run's name


@pytest.mark.slow
def test_ctrl_c_of_a_grid_is_one_line(tmp_path):
    import yaml
    nb = _tiny_notebook(tmp_path)
    (tmp_path / 'g.yaml').write_text(yaml.safe_dump({'notebook': str(nb), 'parameters': {'steps': 100, 'sleep': 0.5},
                                                     'axes': {'fail': [False, True]}, 'html': False}))
    r = subprocess.Popen([*CLI, 'grid', 'g.yaml', '--workers', '1', '--out', 'grid'], cwd=tmp_path, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    for _ in range(600):   # until the first run's kernel is training
        if list((tmp_path / 'grid').glob('*/.tiny.running.ipynb')): break
        time.sleep(0.2)
    time.sleep(3)
    os.killpg(r.pid, signal.SIGINT)
    out, err = r.communicate(timeout=120)
    assert r.returncode == 130, err
    lines = [l for l in err.splitlines() if l.strip() and not l.startswith('grid g: ')]   # but for the grid's progress bar: one line
    assert lines == ['cxr-reproduce: interrupted; re-run the same command to resume from the last checkpoint'], err
