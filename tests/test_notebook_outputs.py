"""The scan of executed notebooks' outputs (`conftest.notebook_output_problems`) that the notebook-running tests apply:
it must catch what the demo showed a student under "Training", and pass a clean notebook."""
import json
from conftest import notebook_output_problems

#: the two red blocks of the 002 demo's training cell (the DataLoader teardown in a forked worker), as papermill stores them
TEARDOWN = ("Exception ignored in: <function _MultiProcessingDataLoaderIter.__del__ at 0x7f>\nTraceback (most recent call last):\n"
            '  File ".../torch/utils/data/dataloader.py", line 1618, in __del__\n    self._shutdown_workers()\n'
            "    assert self._parent_pid == os.getpid(), 'can only test a child process'\n"
            "AssertionError: can only test a child process\n")


def _notebook(tmp_path, *outputs):
    cells = [{'cell_type': 'markdown', 'metadata': {}, 'source': '# A Traceback in prose is not an output'},
             {'cell_type': 'code', 'metadata': {}, 'execution_count': 1, 'source': 'fit()', 'outputs': list(outputs)}]
    f = tmp_path / 'run.ipynb'
    f.write_text(json.dumps({'cells': cells, 'metadata': {}, 'nbformat': 4, 'nbformat_minor': 5}))
    return f


def test_the_demos_dataloader_teardown_is_caught(tmp_path):
    nb = _notebook(tmp_path, {'output_type': 'stream', 'name': 'stdout', 'text': 'ours/stage1 epoch 1/4: train_loss 0.6931\n'},
                   {'output_type': 'stream', 'name': 'stderr', 'text': TEARDOWN.splitlines(keepends=True)})
    found = notebook_output_problems(nb)
    assert found[0].startswith('cell 1: Exception ignored in: <function _MultiProcessingDataLoaderIter.__del__')
    assert 'cell 1: AssertionError: can only test a child process' in found and any('Traceback' in f for f in found)


def test_errors_warnings_and_allowed_lines(tmp_path):
    nb = _notebook(tmp_path, {'output_type': 'error', 'ename': 'CXRDataError', 'evalue': 'no positives', 'traceback': []},
                   {'output_type': 'stream', 'name': 'stderr', 'text': 'x.py:3: UserWarning: y is deprecated\n'},
                   {'output_type': 'display_data', 'metadata': {}, 'data': {'text/plain': ['a table\n', 'no problem here']}})
    assert notebook_output_problems(nb) == ['cell 1: CXRDataError: no positives', 'cell 1: x.py:3: UserWarning: y is deprecated']
    assert notebook_output_problems(nb, allow='UserWarning') == ['cell 1: CXRDataError: no positives']
    clean = _notebook(tmp_path, {'output_type': 'stream', 'name': 'stdout', 'text': 'mean AUROC 0.61 [0.52, 0.70]\nerror bars: 95% CI\n'})
    assert notebook_output_problems(clean) == []
