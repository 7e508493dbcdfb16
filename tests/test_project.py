"""Project hygiene: the package is exactly what the notebooks export, notebooks carry no outputs,
the exported package imports without the dev-only tools, and imports run one way through the layers."""
import ast, json, shutil, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / 'cxr_notebooks'
NBDEV_EXPORT = Path(sys.executable).parent / 'nbdev_export'

#: The layers, lowest first. A module may import from its own subpackage and from lower layers only;
#: subpackages on one layer are peers and never import each other.
LAYERS = [{'core'}, {'data'}, {'models', 'losses', 'metrics'}, {'explain'}, {'train'}, {'eval', 'viz'},
          {'methods'}, {'reproduce'}]
RANK = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


def _modules() -> dict[str, Path]:
    "Dotted module name (without the package prefix) -> file, for every exported module."
    return {'.'.join(p.relative_to(PKG).with_suffix('').parts): p for p in PKG.rglob('*.py')
            if not p.name.startswith('_') and '__pycache__' not in p.parts}


def test_nbdev_export_reproduces_package(tmp_path):
    "Exporting the notebooks into a scratch copy gives byte-identical modules."
    shutil.copy(ROOT / 'settings.ini', tmp_path)
    shutil.copytree(ROOT / 'nbs', tmp_path / 'nbs')
    (tmp_path / 'cxr_notebooks').mkdir()
    shutil.copy(PKG / '__init__.py', tmp_path / 'cxr_notebooks')
    subprocess.run([str(NBDEV_EXPORT)], cwd=tmp_path, check=True, capture_output=True)
    def tree(root): return {str(p.relative_to(root)): p.read_text() for p in root.rglob('*.py') if '__pycache__' not in p.parts}
    ours, fresh = tree(PKG), tree(tmp_path / 'cxr_notebooks')
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
    code = ("import sys\nfor m in ('nbdev', 'fastcore', 'papermill', 'jupytext', 'execnb'): sys.modules[m] = None\n"
            + ''.join(f"import cxr_notebooks.{m}\n" for m in sorted(_modules())))
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr


def _imported_modules(path: Path, module: str, known: set[str] | None = None) -> set[str]:
    "The cxr_notebooks modules or packages (dotted, without the prefix) that `module` imports, relative or absolute, at any depth."
    known = set(_modules()) if known is None else known
    here = module.split('.')
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                target = here[:len(here) - node.level] + (node.module.split('.') if node.module else [])
            elif node.module and node.module.split('.')[0] == 'cxr_notebooks':
                target = node.module.split('.')[1:]
            else: continue
            for a in node.names:  # `from P import m` imports the module P.m when there is one, else names of P
                sub = '.'.join(target + [a.name])
                out.add(sub if sub in known or not target else '.'.join(target))
        elif isinstance(node, ast.Import):
            out.update(a.name.split('.', 1)[1] for a in node.names if a.name.startswith('cxr_notebooks.'))
    return out


def _imported_packages(path: Path, module: str) -> set[str]:
    "The cxr_notebooks subpackages (first component) that `module` imports, relative or absolute, at any depth."
    return {m.split('.')[0] for m in _imported_modules(path, module)}


def _import_cycles(modules: dict[str, Path]) -> list[str]:
    "One cycle `a -> b -> a` for each set of `modules` that import each other (module-level or inside a function)."
    graph = {m: _imported_modules(p, m, set(modules)) & set(modules) - {m} for m, p in modules.items()}
    cycles, state = [], {}
    def visit(m: str, stack: list[str]) -> None:
        state[m] = 'open'; stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 'open': cycles.append(' -> '.join(stack[stack.index(d):] + [d]))
            elif d not in state: visit(d, stack)
        stack.pop(); state[m] = 'done'
    for m in sorted(graph):
        if m not in state: visit(m, [])
    return cycles


def test_layers_cover_every_subpackage():
    "Each subpackage is placed on a layer (a new one must be placed on purpose)."
    unplaced = sorted({m.split('.')[0] for m in _modules()} - set(RANK))
    assert not unplaced, f"subpackages not in LAYERS: {unplaced}"


def test_imports_run_one_way():
    "No module imports a package on a higher layer, or a peer on its own layer; no modules import each other in a cycle."
    back = []
    for mod, path in _modules().items():
        pkg = mod.split('.')[0]
        for dep in _imported_packages(path, mod):
            if dep != pkg and dep in RANK and RANK[dep] >= RANK[pkg]:
                back.append(f'{mod} -> {dep}')
    assert not back, f"imports that run against the layers {LAYERS}: {back}"
    cycles = _import_cycles(_modules())   # within a subpackage: a cycle across two would be a back-arrow above
    assert not cycles, f"modules that import each other (a function-level import too): {cycles}"


def test_import_walker_catches_a_back_arrow(tmp_path):
    "The AST walk sees relative, absolute and function-local imports (so the test above can fail)."
    f = tmp_path / 'm.py'
    f.write_text("from ..reproduce.kit import x\ndef g():\n    import cxr_notebooks.train.learner\n"
                 "    from cxr_notebooks import viz\nfrom .labels import y\n")
    assert _imported_packages(f, 'data.nih') == {'reproduce', 'train', 'viz', 'data'}


def test_cycle_detector_catches_a_cycle(tmp_path):
    "A cycle held open by a function-level import, relative or absolute, is found (so the test above can fail)."
    files = {'reproduce.runner': "from ..core import x\ndef main():\n    from cxr_notebooks.reproduce.grid import run_grid\n",
             'reproduce.grid': "from .runner import run_reproduction\n",
             'reproduce.report': "from . import grid\n", 'core': ""}
    mods = {}
    for m, text in files.items():
        mods[m] = tmp_path / f'{m}.py'; mods[m].write_text(text)
    assert _imported_modules(mods['reproduce.report'], 'reproduce.report', set(mods)) == {'reproduce.grid'}
    assert _import_cycles(mods) == ['reproduce.grid -> reproduce.runner -> reproduce.grid']
    mods['reproduce.runner'].write_text("from ..core import x\n")
    assert _import_cycles(mods) == []
