"""The Triton kernels against the PyTorch path, on the CPU, through Triton's interpreter.

The interpreter must be switched on before any Triton kernel is imported and would change
every other test that imports the package, so the comparison runs in a subprocess
(triton_interpreter_case.py). It checks the maths, not the GPU lowering.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from wkv_testing import TOLERANCE

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def interpreter_report():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join(
        [str(HERE)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    run = subprocess.run([sys.executable, str(HERE / "triton_interpreter_case.py")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", ["one_chunk_default", "carries_and_lengths", "extreme",
                                  "one_chunk_default/tile", "carries_and_lengths/tile", "extreme/tile",
                                  "registered_op", "registered_op_fp64"])
def test_triton_matches_torch_path_fp32(interpreter_report, case):
    errs = dict(interpreter_report[case])
    if case == "registered_op":
        assert errs.pop("padding_is_zero") == 0.0
    if case.startswith("extreme"):  # see test_wkv_edge_cases.test_extreme_keys_and_decay
        assert errs.pop("y") <= TOLERANCE
        assert max(errs.values()) <= 10 * TOLERANCE, errs  # the gradients: the documented 10x bound
    else:
        assert max(errs.values()) <= TOLERANCE, errs


@pytest.mark.parametrize("case", ["fp16", "bf16", "fp16/tile", "bf16/tile"])
def test_triton_half_precision_inputs(interpreter_report, case):
    """Half inputs are read as they are and computed in fp32: same bound as fp32."""
    errs = interpreter_report[case]
    assert max(errs.values()) <= TOLERANCE, errs
