"""How long `cxr-reproduce --help` and `cxr-reproduce list` take to start and answer, against `python -c 'import torch'`.

Issue 19 part 4: the command imported the explorers (torch, scikit-learn, matplotlib, grad-cam) for one string
constant, so `--help` and `list` took ~10 s. Each command runs in a fresh interpreter (a subprocess, as from a
shell), --repeats times; the median wall time is printed with its ratio to `import torch`. The command is
started as `python -m cxr_notebooks.reproduce.cli` (what the `cxr-reproduce` console script calls, without
depending on how that script was installed). `import papermill` is timed too: `list` reads each notebook's
parameters cell with papermill, and that import is most of what `list` costs.

    .venv/bin/python benchmarks/bench_cli.py [--repeats 5]
"""
from __future__ import annotations
import argparse, statistics, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, '-m', 'cxr_notebooks.reproduce.cli']
COMMANDS = {'cxr-reproduce --help': [*CLI, '--help'], 'cxr-reproduce list': [*CLI, 'list'],
            "python -c 'import papermill'": [sys.executable, '-c', 'import papermill'],
            "python -c 'import torch'": [sys.executable, '-c', 'import torch']}


def wall(cmd: list[str], repeats: int) -> float:
    "Median wall seconds of `cmd` over `repeats` runs (each must exit 0)."
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict[str, float]:
    "Time each command and print its median and its ratio to `import torch`; returns name -> median seconds."
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--repeats', type=int, default=5)
    a = ap.parse_args(argv)
    res = {name: wall(cmd, a.repeats) for name, cmd in COMMANDS.items()}
    torch_s = res["python -c 'import torch'"]
    print(f"median of {a.repeats} runs each, fresh interpreter per run")
    for name, s in res.items():
        print(f"{name:<32} {s:6.2f} s   {s / torch_s:5.2f} x import torch")
    return res


if __name__ == '__main__':
    main()
