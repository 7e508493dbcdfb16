"""Fixtures shared by more than one test file live here, one section per area; a fixture used by a
single file stays in that file."""
import json, re, shutil, subprocess
import pytest
import torch

torch.set_num_threads(1)  # CI shares 2 cores between pytest and nbdev_test; one thread is also the fastest per test


@pytest.fixture(scope='session')
def sample_table():
    "The 646 embedded real NIH images at 256 px (image table with paths, labels and patient ids)."
    from cxr_notebooks.data.nih import nih_sample_table
    return nih_sample_table(256)


# --- reproduction grids (tests/test_grid.py, tests/test_report.py) ---

@pytest.fixture(scope='session')
def smoke_grid(tmp_path_factory):
    """A real grid, run once on a local Ray and shared: grids/002_smoke_2x2.yaml (loss x optimizer at seed 002's
    smallest smoke settings) plus one run that fails (split='chexnet' empties the sample's val part).
    A namespace with `spec` (dict), `out` (grid folder), `result` (GridResult) and `seconds`."""
    import time, types, yaml
    from pathlib import Path
    from cxr_notebooks.reproduce.grid import run_grid
    spec = yaml.safe_load((Path(__file__).parents[1] / 'grids' / '002_smoke_2x2.yaml').read_text())
    spec['runs'] = [{'split': 'chexnet'}]
    out, t0 = tmp_path_factory.mktemp('grid') / '002_smoke_2x2', time.time()
    result = run_grid(spec, out, workers=2, progress=False)
    return types.SimpleNamespace(spec=spec, out=out, result=result, seconds=time.time() - t0)


# ---- headless Chromium (the report and docs pages are checked in a real browser) ----------------------------
FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync', '--enable-logging=stderr', '--v=0']


@pytest.fixture(scope='session')
def chromium() -> str:
    "The Chromium executable; the test fails (before the grid is paid for) with how to install it when there is none."
    exe = next((shutil.which(n) for n in ('chromium', 'chromium-browser', 'google-chrome') if shutil.which(n)), None)
    if exe is None:
        pytest.fail("this test opens a page in a real browser and needs Chromium: on Debian/Ubuntu "
                    "`apt-get update && apt-get install -y chromium` (the CI script installs it)")
    return exe


def browse(chromium: str, page, tmp_path, *args) -> subprocess.CompletedProcess:
    "Open `page` in headless Chromium with a fresh profile and `args` (--dump-dom, --screenshot=...)."
    profile = tmp_path / f'profile{len(list(tmp_path.glob("profile*")))}'
    return subprocess.run([chromium, *FLAGS, f'--user-data-dir={profile}', *args, page.as_uri()],
                          capture_output=True, text=True, timeout=120)


def console_errors(stderr: str) -> list[str]:
    "Chromium's log lines about script errors or console errors."
    return [l for l in stderr.splitlines() if 'Uncaught' in l or ':CONSOLE' in l]


# Records script errors and failed loads, and after load whether every image decoded, into the DOM (test copy only:
# the pages themselves have no script).
PROBE = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(e.message || ('failed to load ' + (e.target.src || e.target.href || e.target.tagName))), true);
window.addEventListener('load', () => {
  const broken = [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src.slice(0, 40));
  const d = document.createElement('pre'); d.id = 'probe';
  d.textContent = JSON.stringify({errors: window.__errors, images: document.images.length, broken});
  document.body.appendChild(d);
});
</script>"""


def probed_state(dom: str) -> dict:
    "What PROBE recorded in a dumped DOM."
    return json.loads(re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S).group(1).replace('&quot;', '"'))


# ---- seed 001 HAM on CheXpert (tests/test_ham_data.py, tests/test_repro_ham_chexpert.py) ------------------------

@pytest.fixture(scope='session')
def chexpert_stand_in(tmp_path_factory):
    """A FABRICATED CheXpert-v1.0-small folder (`data.ham.write_chexpert_stand_in`): 24 + 8 phantoms at real train/valid
    paths of the radiologist's box file, 30 + 6 unboxed ones of made-up patients, made-up CSV rows (labels from the boxes,
    some -1.0), stored at a 40 px short side, and `original_sizes.csv`. No CheXpert image or CSV row is real.
    Returns the folder holding `CheXpert-v1.0-small/` and `original_sizes.csv`."""
    from cxr_notebooks.data.ham import write_chexpert_stand_in
    return write_chexpert_stand_in(tmp_path_factory.mktemp('chexpert') / 'data')


# ---- executed notebooks (tests/test_repro.py, tests/test_repro_full_profile.py) ---------------------------------
#: What a reader must never see in an executed notebook: a traceback, an error name, an exception ignored in a
#: destructor (the DataLoader teardown's `AssertionError: can only test a child process`), a warning line.
OUTPUT_PROBLEMS = r'Traceback|Exception ignored|\b[A-Z]\w*Error\b|\b[A-Z]\w*Warning\b'


def notebook_output_problems(notebook, allow: str | None = None) -> list[str]:
    """The outputs of an executed notebook matching `OUTPUT_PROBLEMS` (error outputs, stream text, text/plain of displays),
    as 'cell N: first matching line'; lines matching the regex `allow` are accepted (an intended, documented warning)."""
    import json, re
    from pathlib import Path
    found = []
    for i, cell in enumerate(json.loads(Path(notebook).read_text(encoding='utf-8'))['cells']):
        for o in cell.get('outputs', []):
            if o['output_type'] == 'error':
                found.append(f"cell {i}: {o['ename']}: {o['evalue']}"[:300]); continue
            text = o.get('text', '') if o['output_type'] == 'stream' else o.get('data', {}).get('text/plain', '')
            for line in (''.join(text) if isinstance(text, list) else text).splitlines():
                if re.search(OUTPUT_PROBLEMS, line) and not (allow and re.search(allow, line)):
                    found.append(f'cell {i}: {line.strip()[:300]}')
    return found


def check_headline(h: dict, measured: bool | None = None) -> None:
    """Issue 17: a record's headline is either measured (a value inside its CI, no note) or not measurable (no value,
    no CI, the note saying why: too few to measure, or a controlled experiment's baseline that did not learn); `measured` True/False says which one the test's data must give (None: either, consistently)."""
    import math
    missing = lambda v: v is None or (isinstance(v, float) and math.isnan(v))
    if h.get('note'):
        assert measured is not True, f"expected a measured headline, got: {h['note']}"
        assert any(w in h['note'] for w in ('too few to measure', 'not measurable')) and all(missing(h.get(k)) for k in ('value', 'low', 'high')), h
    else:
        assert measured is not False, f"expected no headline (too few to measure), got {h}"
        assert h['low'] <= h['value'] <= h['high'], h
