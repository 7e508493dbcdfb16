"""Project hygiene: the package is exactly what the notebooks export, notebooks carry no outputs,
and the exported package imports without the dev-only tools."""
import json, shutil, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBDEV_EXPORT = Path(sys.executable).parent / 'nbdev_export'


def test_nbdev_export_reproduces_package(tmp_path):
    "Exporting the notebooks into a scratch copy gives byte-identical modules."
    shutil.copy(ROOT / 'settings.ini', tmp_path)
    shutil.copytree(ROOT / 'nbs', tmp_path / 'nbs')
    (tmp_path / 'cxr_notebooks').mkdir()
    shutil.copy(ROOT / 'cxr_notebooks' / '__init__.py', tmp_path / 'cxr_notebooks')
    subprocess.run([str(NBDEV_EXPORT)], cwd=tmp_path, check=True, capture_output=True)
    ours = {p.name: p.read_text() for p in (ROOT / 'cxr_notebooks').glob('*.py')}
    fresh = {p.name: p.read_text() for p in (tmp_path / 'cxr_notebooks').glob('*.py')}
    assert sorted(fresh) == sorted(ours), f"modules differ: {set(fresh) ^ set(ours)}"
    stale = [n for n in ours if ours[n] != fresh[n]]
    assert not stale, f"cxr_notebooks/ differs from nbdev_export for {stale}: edit the notebooks, not the package"


def test_notebooks_have_no_outputs():
    "Library and reproduction notebooks are committed clean (nbdev_clean)."
    dirty = [str(p.relative_to(ROOT)) for p in (ROOT / 'nbs').rglob('*.ipynb')
             if '.ipynb_checkpoints' not in p.parts
             and any(c.get('outputs') or c.get('execution_count')
                     for c in json.loads(p.read_text())['cells'] if c['cell_type'] == 'code')]
    assert not dirty, f"notebooks with outputs: {dirty}"


def test_package_imports_without_dev_tools():
    "Every module imports with nbdev, fastcore, papermill and jupytext unavailable."
    mods = sorted(p.stem for p in (ROOT / 'cxr_notebooks').glob('*.py') if not p.stem.startswith('_'))
    code = ("import sys\nfor m in ('nbdev', 'fastcore', 'papermill', 'jupytext', 'execnb'): sys.modules[m] = None\n"
            + ''.join(f"import cxr_notebooks.{m}\n" for m in mods))
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
