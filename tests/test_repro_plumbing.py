"""The reproduction notebooks read as the paper: their plumbing lives in the library (`methods.<paper>`, `reproduce.kit`),
where unit tests, the layering test and duplicate checks see it. A notebook holds no `raise` (bad parameters are the
library's to stop), no function longer than a few lines, and stays near 150 code lines."""
import ast, json
from pathlib import Path
import pytest

REPRO = sorted((Path(__file__).resolve().parents[1] / 'nbs' / 'repro').glob('[0-9][0-9][0-9]_*.ipynb'))
MAX_FUNCTION_LINES, MAX_CODE_LINES = 6, 175


def _code(nb: Path) -> str:
    "The notebook's code cells as one Python source (IPython magic and shell lines become `pass`)."
    cells = [c for c in json.loads(nb.read_text())['cells'] if c['cell_type'] == 'code']
    return '\n'.join(l[:len(l) - len(l.lstrip())] + 'pass' if l.lstrip().startswith(('%', '!')) else l
                     for c in cells for l in ''.join(c['source']).splitlines())


@pytest.mark.parametrize('nb', REPRO, ids=lambda p: p.stem)
def test_reproduction_notebook_has_no_raise_and_only_short_functions(nb):
    tree = ast.parse(_code(nb))
    assert not [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Raise)], f"{nb.name}: a `raise` belongs in the method module"
    long = {n.name: n.end_lineno - n.lineno + 1 for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    assert all(v <= MAX_FUNCTION_LINES for v in long.values()), f"{nb.name}: functions longer than {MAX_FUNCTION_LINES} lines {long}"


@pytest.mark.parametrize('nb', REPRO, ids=lambda p: p.stem)
def test_reproduction_notebook_stays_short(nb):
    n = sum(1 for l in _code(nb).splitlines() if l.strip())   # a magic line counts as one
    assert n <= MAX_CODE_LINES, f"{nb.name}: {n} non-blank code lines; move plumbing into methods.<paper> or reproduce.kit"
