"""What a user chose on the command line or in a config, checked before a stage writes anything
(pipeline/core/checks.py): devices, compile backends, folds."""

from __future__ import annotations

import pytest
import torch

from pipeline.core.checks import check_compile, check_device, check_fold
from pipeline.core.config import ConfigError, load_config


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "CPU", "cuda:0:1", ""])
def test_an_unknown_device_names_the_option_and_what_is_allowed(name):
    with pytest.raises(ConfigError, match=r"^--device=.*: unknown device; use auto, cpu, cuda or cuda:N$"):
        check_device(name, "--device")


def test_cuda_is_refused_where_torch_sees_no_gpu_or_not_that_many():
    check_device("cpu")
    check_device("auto")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="device=cuda: CUDA asked for, but torch sees no GPU"):
            check_device("cuda")
    else:
        n = torch.cuda.device_count()
        check_device(f"cuda:{n - 1}")
        with pytest.raises(ConfigError, match=f"only {n} CUDA device"):
            check_device(f"cuda:{n}")


def test_compile_is_a_switch_or_a_backend():
    for value in (True, False, "eager", "aot_eager", "inductor"):
        check_compile(value, "train.compile")
    with pytest.raises(ConfigError, match="train.compile='indcutor': not true, false or a torch.compile backend"):
        check_compile("indcutor", "train.compile")


def test_a_fold_not_in_the_folds_csv_is_named():
    cfg = load_config(None, ["fold=7"])
    with pytest.raises(ConfigError, match=r"fold 7: not in .*, which has folds \[0, 1, 2\]"):
        check_fold(cfg, [0, 1, 2])
    check_fold(load_config(None, ["fold=1"]), [0, 1, 2])
    check_fold(load_config(None, ["fold=full"]), [0, 1, 2])  # every car: no fold to find
