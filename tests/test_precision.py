"Precision per machine (issue 21): AMP's dtype is a pure function of the GPU's compute capability."
import pytest
import torch
from cxr_notebooks.train.learner import autocast_dtype


@pytest.mark.parametrize('capability,dtype', [((6, 0), torch.float16), ((7, 0), torch.float16), ((7, 5), torch.float16),   # P100, V100, T4
                                              ((8, 0), torch.bfloat16), ((8, 6), torch.bfloat16), ((8, 9), torch.bfloat16),   # A100, A10/3090, L4
                                              ((9, 0), torch.bfloat16), ((10, 0), torch.bfloat16)])                            # H100, B200
def test_autocast_dtype_by_compute_capability(capability, dtype):
    "fp16 (with the learner's GradScaler) before Ampere, where bf16 is emulated; bf16 from 8.0 on."
    assert autocast_dtype(capability) == dtype
