"""What a Colab or Kaggle user meets first in each reproduction notebook: badges and an install cell that follow
settings.ini's `git_url` (the one place to change the repository), the paper's bibliographic reference as its method
module declares it, and nothing that resolves the clone's layout."""
import configparser, importlib, json, pkgutil, re
from pathlib import Path
import pytest
import cxr_notebooks.methods
from cxr_notebooks.reproduce.runner import repro_notebooks

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = repro_notebooks(ROOT / 'nbs' / 'repro')


def _git_url() -> str:
    cfg = configparser.ConfigParser(); cfg.read(ROOT / 'settings.ini')
    return cfg['DEFAULT']['git_url'].rstrip('/')


def _papers() -> dict:
    "Paper id -> the PAPER dict of the method module that declares it."
    out = {}
    for info in pkgutil.iter_modules(cxr_notebooks.methods.__path__):
        paper = getattr(importlib.import_module(f'cxr_notebooks.methods.{info.name}'), 'PAPER', None)
        if paper: out[paper['seed']] = paper
    return out


def _cells(seed):
    return json.loads(NOTEBOOKS[seed].path.read_text())['cells']


@pytest.mark.parametrize('seed', sorted(NOTEBOOKS))
def test_badges_and_install_cell_follow_git_url(seed):
    "Colab and Kaggle badges open this very notebook in settings.ini's repository; the first code cell installs from it."
    git, name = _git_url(), NOTEBOOKS[seed].path.name
    cells = _cells(seed)
    intro = ''.join(cells[0]['source'])
    user_repo = git.split('github.com/')[1]
    assert f'(https://colab.research.google.com/github/{user_repo}/blob/main/nbs/repro/{name})' in intro
    assert f'(https://kaggle.com/kernels/welcome?src={git}/blob/main/nbs/repro/{name})' in intro
    badges = re.findall(r'\]\((https://[^)]*(?:colab\.research\.google\.com/github|kaggle\.com/kernels)[^)]*)\)', intro)
    assert len(badges) == 2, badges   # no stale badge pointing elsewhere
    code = next(c for c in cells if c['cell_type'] == 'code')
    src = ''.join(code['source'])
    assert "importlib.util.find_spec('cxr_notebooks') is None" in src, "the install must be skipped where the suite is installed"
    assert f'%pip install -q "cxr_notebooks @ git+{git}"' in src
    assert 'Internet > On' in intro and 'Accelerator > GPU' in intro and 'Change runtime type' in intro


@pytest.mark.parametrize('seed', sorted(NOTEBOOKS))
def test_intro_cites_the_method_modules_reference(seed):
    "The first cell prints the paper's reference exactly as its method module declares it (one source of truth)."
    paper = _papers()[seed]
    assert str(paper['citation']) in ''.join(_cells(seed)[0]['source'])


def test_no_notebook_or_module_resolves_the_clone_layout():
    "No notebook (library or reproduction), module or the README cites a paper by a path into `../shared`."
    hits = []
    files = [*sorted((ROOT / 'nbs').rglob('*.ipynb')), *sorted((ROOT / 'cxr_notebooks').rglob('*.py')), ROOT / 'README.md']
    for f in files:
        text = f.read_text()
        if f.suffix == '.ipynb': text = '\n'.join(''.join(c['source']) for c in json.loads(text)['cells'])
        hits += [f"{f.relative_to(ROOT)}: {m}" for m in re.findall(r'\.\./shared\S*|shared/seeds\S*', text)]
    assert not hits, hits


# ---- one source of truth for the allowed values (issue 19 item 2) ---------------------------------------------

@pytest.mark.parametrize('seed', sorted(NOTEBOOKS))
def test_metadata_choices_equal_the_method_modules_CHOICES(seed):
    "The runner's copy (metadata `cxr_notebooks.choices`, read without torch) is the method module's `CHOICES`, in order."
    from cxr_notebooks.reproduce.reference import method_module
    want = {k: list(v) for k, v in sorted(method_module(seed).CHOICES.items())}
    assert NOTEBOOKS[seed].choices == want, \
        f"{NOTEBOOKS[seed].path.name}: set metadata cxr_notebooks.choices to {json.dumps(want)} (the method module's CHOICES)"


@pytest.mark.parametrize('seed', sorted(NOTEBOOKS))
def test_CHOICES_name_parameters_and_admit_every_default(seed):
    "Each `CHOICES` key is a parameter of the notebook, and its default and every profile's value are among the choices."
    from cxr_notebooks.reproduce.kit import notebook_defaults
    from cxr_notebooks.reproduce.reference import method_module
    module, defaults = method_module(seed), notebook_defaults(seed)
    assert set(module.CHOICES) <= set(defaults), sorted(set(module.CHOICES) - set(defaults))
    for k, allowed in module.CHOICES.items():
        values = [defaults[k], *(p.get(k) for p in module.PROFILES.values())]
        assert all(v is None or v in allowed for v in values), (k, values, allowed)


@pytest.mark.parametrize('seed', sorted(NOTEBOOKS))
def test_start_run_refuses_a_value_outside_CHOICES(seed, tmp_path):
    """A notebook run by papermill directly (no runner) is checked too: `kit.start_run` stops on a value outside the
    paper's `CHOICES`, naming the parameter, the value and the allowed values, before it writes anything."""
    from cxr_notebooks.reproduce.kit import start_run
    from cxr_notebooks.reproduce.reference import method_module
    module = method_module(seed)
    name, allowed = next((k, v) for k, v in module.CHOICES.items() if k != 'profile')
    params = dict(profile=next(iter(module.PROFILES)), seed=0, out_dir=str(tmp_path / 'run'), **{name: 'bogus'})
    with pytest.raises(ValueError) as e: start_run(module.PAPER, module.PROFILES, params)
    assert str(e.value) == f"parameter {name}: expected one of {', '.join(map(str, allowed))}, got 'bogus'"
    assert not (tmp_path / 'run').exists()
    run = start_run(module.PAPER, module.PROFILES, {**params, name: allowed[-1]})   # an allowed value runs
    assert getattr(run.cfg, name) == allowed[-1]
