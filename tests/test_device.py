"""``engine.device``: where training and evaluation run; CUDA asked for on a machine without it is a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import pvit
from pvit.device import resolve_device
from pvit.errors import RecipeError
from pvit.run import run_recipe

MICRO = Path(__file__).parent / "recipes" / "micro.yaml"


def test_cpu_and_auto_resolve_to_a_device_this_machine_has():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert resolve_device("auto") == expected
    assert resolve_device(" CPU ") == torch.device("cpu")


def test_a_device_that_is_not_one_names_the_valid_values():
    with pytest.raises(RecipeError, match=r"engine.device: 'gpu0' is not a device; use one of auto, cpu, cuda, cuda:N"):
        resolve_device("gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_cuda_is_an_error_before_any_work(tmp_path):
    with pytest.raises(RecipeError, match=r"engine.device: 'cuda' was asked for but this machine has no CUDA device"):
        resolve_device("cuda")
    loaded = pvit.load_recipe(MICRO, [f"run_dir={tmp_path / 'run'}", "engine.device=cuda:1"])
    with pytest.raises(RecipeError, match="'cuda:1' was asked for"):
        run_recipe(loaded, log=lambda *_: None)
    assert not (tmp_path / "run").exists()  # refused before the run directory was made


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_index_beyond_the_devices_is_an_error():
    n = torch.cuda.device_count()
    with pytest.raises(RecipeError, match=f"has {n} CUDA device"):
        resolve_device(f"cuda:{n}")
