"""The package as a user installs it: a wheel built from this checkout, installed into a fresh virtual environment
outside the clone, used from an empty folder. Nothing may resolve the clone's layout (`data/`, `nbs/`, `../shared`).

The fresh environment gets everything by a real `pip install <wheel>` (so the base requirements must cover what
`import cxr_notebooks` and `cxr-reproduce` use), except torch and torchvision with their dependency closure: those
are linked in from the test's own environment (the same local wheels `make` installs; copying 5 GB of CUDA build
again would cost minutes and test nothing of ours)."""
import json, os, shutil, subprocess, sys
from importlib import metadata
from pathlib import Path
import pytest
from cxr_notebooks.reproduce.runner import repro_notebooks

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _closure(names: set[str]) -> set[str]:
    "The installed distributions `names` need, transitively (by their declared, unconditional or platform-met requirements)."
    from packaging.requirements import Requirement
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        try: dist = metadata.distribution(name)
        except metadata.PackageNotFoundError: continue
        key = dist.metadata['Name'].lower().replace('_', '-')
        if key in seen: continue
        seen.add(key)
        for r in dist.requires or []:
            req = Requirement(r)
            if req.marker is None or req.marker.evaluate({'extra': ''}): todo.append(req.name)
    return seen


def _link_dists(names: set[str], site: Path) -> None:
    "Symlink the top-level files/folders and dist-info of each installed distribution into `site`."
    site.mkdir(parents=True)
    for name in names:
        dist = metadata.distribution(name)
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith('..')}
        base = Path(dist.locate_file(''))
        for t in tops:
            if not (site / t).exists() and (base / t).exists(): (site / t).symlink_to(base / t)


@pytest.fixture(scope='session')
def wheel_env(tmp_path_factory):
    "A fresh venv with the wheel of this checkout installed; returns (bin folder, wheel path, an empty working folder)."
    tmp = tmp_path_factory.mktemp('wheel')
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '-w', str(tmp / 'dist'), str(ROOT)],
                   check=True, capture_output=True, text=True)
    wheel = next((tmp / 'dist').glob('cxr_notebooks-*.whl'))
    venv = tmp / 'venv'
    subprocess.run([getattr(sys, '_base_executable', sys.executable), '-m', 'venv', str(venv)], check=True)
    site = next(venv.glob('lib/python*/site-packages'))
    _link_dists(_closure({'torch', 'torchvision'}), tmp / 'torch-site')
    (site / '_torch_from_test_env.pth').write_text(str(tmp / 'torch-site') + '\n')
    r = subprocess.run([str(venv / 'bin' / 'python'), '-m', 'pip', 'install', '-q', '--disable-pip-version-check', str(wheel)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    work = tmp / 'empty'; work.mkdir()
    return venv / 'bin', wheel, work


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ('CXR_NOTEBOOKS_DATA', 'PYTHONPATH', 'VIRTUAL_ENV')}
    return {**env, 'CXR_NOTEBOOKS_HEADLESS': '1'}


def _run(bin_dir: Path, cwd: Path, *args, timeout=900) -> subprocess.CompletedProcess:
    r = subprocess.run([str(bin_dir / args[0]), *args[1:]], cwd=cwd, capture_output=True, text=True, env=_env(), timeout=timeout)
    assert r.returncode == 0, f"{args}: exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def test_wheel_carries_data_and_notebooks_and_stays_small(wheel_env):
    "The wheel ships the embedded data, the reproduction notebooks and the grids, under ~40 MB."
    import zipfile
    _, wheel, _ = wheel_env
    names = zipfile.ZipFile(wheel).namelist()
    for must in ('cxr_notebooks/_data/nih/subset.csv', 'cxr_notebooks/_data/lungseg/lung_unet_128.pt',
                 'cxr_notebooks/_data/reference/seed002_tables.csv', 'cxr_notebooks/_data/PROVENANCE.md',
                 'cxr_notebooks/_repro/002_aggregate_method.ipynb', 'cxr_notebooks/_grids/002_smoke_2x2.yaml'):
        assert must in names, must
    assert sum(n.startswith('cxr_notebooks/_data/nih/images256/') for n in names) == 646
    assert wheel.stat().st_size < 40e6, f"wheel is {wheel.stat().st_size / 1e6:.1f} MB"


def test_installed_package_works_from_an_empty_folder(wheel_env):
    "Import, the embedded sample, a paper table and `cxr-reproduce list` from an empty folder, nothing from the clone."
    bin_dir, _, work = wheel_env
    code = ("import cxr_notebooks, json\n"
            "from cxr_notebooks.core import embedded_data_dir, resource_dir\n"
            "from cxr_notebooks.data.datasets import sample_dataset\n"
            "from cxr_notebooks.reproduce.reference import reference_table\n"
            "ds = sample_dataset(); t = reference_table('002', 'Table 4')\n"
            "print(json.dumps(dict(pkg=cxr_notebooks.__file__, data=str(embedded_data_dir()), repro=str(resource_dir('repro')),"
            " n=len(ds), rows=len(t))))\n")
    out = json.loads(_run(bin_dir, work, 'python', '-c', code).stdout.strip().splitlines()[-1])
    assert str(ROOT) not in out['pkg'] and '/site-packages/cxr_notebooks' in out['data'] and out['data'].endswith('_data')
    assert out['repro'].endswith('_repro') and out['n'] == 646 and out['rows'] >= 14
    listed = _run(bin_dir, work, 'cxr-reproduce', 'list').stdout
    assert all(s in listed for s in repro_notebooks()), listed[:2000]


def test_installed_cli_runs_a_notebook_and_a_copied_notebook_runs_standalone(wheel_env):
    """`cxr-reproduce run 002` at its smallest setting, and seed 002's notebook copied alone into an empty folder and
    executed with papermill (the Colab situation: the install cell is skipped because the package is present)."""
    bin_dir, _, work = wheel_env
    smallest = repro_notebooks()['002'].smallest
    ps = [a for k, v in smallest.items() for a in ('-p', k, json.dumps(v) if not isinstance(v, str) else v)]
    _run(bin_dir, work, 'cxr-reproduce', 'run', '002', '--out', 'run002', '--no-html', *ps)
    rec = json.loads((work / 'run002' / 'metrics.json').read_text())
    from cxr_notebooks.methods.aggregate import PAPER
    assert rec['profile'] == smallest['profile'] and rec['paper']['citation']['reference'] == str(PAPER['citation'])
    alone = work / 'alone'; alone.mkdir()
    shutil.copy(ROOT / 'nbs' / 'repro' / '002_aggregate_method.ipynb', alone)
    pm = [a for k, v in {**smallest, 'out_dir': str(alone / 'out')}.items() for a in ('-p', k, str(v))]
    _run(bin_dir, alone, 'papermill', '002_aggregate_method.ipynb', 'executed.ipynb', '--no-progress-bar', '-k', 'python3', *pm)
    assert (alone / 'out' / 'metrics.json').is_file()
