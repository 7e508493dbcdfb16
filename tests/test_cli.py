"""The command line (`cxr_notebooks.reproduce.cli`, issue 19 part 4): `--help` and `list` run as a command and import
neither torch nor matplotlib (nor the grid, report and kit modules that need them). Not timed here:
`benchmarks/bench_cli.py` measures them against `import torch`."""
import subprocess, sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
CLI = [sys.executable, '-m', 'cxr_notebooks.reproduce.cli']
HEAVY = ('torch', 'matplotlib', 'sklearn', 'pytorch_grad_cam', 'cxr_notebooks.reproduce.kit', 'cxr_notebooks.reproduce.grid',
         'cxr_notebooks.reproduce.report', 'cxr_notebooks.reproduce.summary', 'cxr_notebooks.viz.explorers')


def test_help_and_list_run_as_a_command():
    h = subprocess.run([*CLI, '--help'], capture_output=True, text=True, cwd=ROOT)
    assert h.returncode == 0 and h.stdout.startswith('usage: cxr-reproduce') and '{demo,run,list,grid,report,summary}' in h.stdout, h.stderr
    r = subprocess.run([*CLI, 'list'], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and '002  Nugroho' in r.stdout and 'smallest: cxr-reproduce run 002' in r.stdout, r.stderr


def test_help_and_list_import_neither_torch_nor_matplotlib():
    "In a fresh interpreter, as the console script starts: `main(['list'])` and `--help` leave the heavy modules unimported."
    code = ("import contextlib, io, sys\nfrom cxr_notebooks.reproduce.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n    assert main(['list']) == 0\n"
            "    try: main(['--help'])\n    except SystemExit as e: assert e.code == 0\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == '[]', f"imported by --help/list: {r.stdout.strip()}"


def test_the_console_script_points_at_the_cli():
    "settings.ini (read by setup.py) installs `cxr-reproduce` as `reproduce.cli:main`, the one owner of `main`."
    line = next(l for l in (ROOT / 'settings.ini').read_text().splitlines() if l.startswith('console_scripts'))
    assert line.split('=', 1)[1].strip() == 'cxr-reproduce=cxr_notebooks.reproduce.cli:main'
    import cxr_notebooks.reproduce.runner as runner
    assert not hasattr(runner, 'main')
