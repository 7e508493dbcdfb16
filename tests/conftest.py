"""Fixtures shared by more than one test file live here, one section per area; a fixture used by a
single file stays in that file."""
import pytest
import torch

torch.set_num_threads(1)  # CI shares 2 cores between pytest and nbdev_test; one thread is also the fastest per test


@pytest.fixture(scope='session')
def sample_table():
    "The 646 embedded real NIH images at 256 px (image table with paths, labels and patient ids)."
    from cxr_notebooks.data.nih import nih_sample_table
    return nih_sample_table(256)
