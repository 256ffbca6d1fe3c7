import os

import pytest
import torch

# Without CUDA, Triton kernels run under the interpreter on CPU tensors.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(max(1, os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    """`gpu` tests (compiled kernels, the engine on CUDA) run by default wherever CUDA is, so the
    README's plain `python3 -m pytest -q` runs them on a GPU machine; without CUDA they are deselected."""
    if torch.cuda.is_available():
        return
    gpu = [it for it in items if it.get_closest_marker("gpu")]
    if gpu:
        config.hook.pytest_deselected(items=gpu)
        items[:] = [it for it in items if not it.get_closest_marker("gpu")]


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def engine_device(request):
    """The device an engine-level test builds its engine on: the CPU always, CUDA where there is one."""
    return request.param
