import pytest
import torch

_CUDA = torch.cuda.is_available()


@pytest.fixture(params=[
    "cpu",  # Triton interpreter (TRITON_INTERPRET=1 set by tests/conftest.py)
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not _CUDA, reason="needs CUDA")]),
])
def device(request):
    if request.param == "cpu" and _CUDA:
        pytest.skip("CUDA present: the interpreter is off, compiled runs are the gpu-marked cases")
    return torch.device(request.param)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)
