"""The GPU part of `bench.wkv` (run for real only on a GPU machine, whose time is scarce):
its launch-configuration text, and the whole GPU report run on CPU tensors under Triton's
interpreter, so that a broken benchmark shows here rather than on the GPU."""
import os
import re
import subprocess
import sys

import pytest

from nnunet_sss.bench.wkv import parse_launch


def test_parse_launch_step_loops_and_tiles():
    loops = parse_launch("128,64,1,1")
    tiles = parse_launch("64,32,8,1,tile")
    assert (loops.chunk, loops.block_c, loops.num_warps, loops.unroll, loops.tile) == (128, 64, 1, 1, False)
    assert (tiles.chunk, tiles.block_c, tiles.num_warps, tiles.unroll, tiles.tile) == (64, 32, 8, 1, True)


@pytest.mark.parametrize("text", ["128,64,1", "128,64,1,1,tiles", "a,64,1,1"])
def test_parse_launch_rejects_bad_text(text):
    with pytest.raises(ValueError, match="launch configuration"):
        parse_launch(text)


def test_gpu_report_runs_under_the_interpreter():
    code = ("from nnunet_sss.bench import wkv\n"
            "wkv.gpu_rows(2, 8, 4, 1, configs=['4,16,1,1', '4,16,1,1,tile', '8,16,1,1,tile'], device='cpu')\n")
    run = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, TRITON_INTERPRET="1"),
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    against_torch = dict(re.findall(r"(y|grad [kvwu]) ([0-9.e+-]+)", out))
    assert set(against_torch) == {"y", "grad k", "grad v", "grad w", "grad u"}, out
    assert max(float(e) for e in against_torch.values()) < 1e-4, out
    configs = re.findall(r"^Launch\(.*tile=(True|False)\).*error ([0-9.e+-]+)$", out, re.M)
    assert [tile for tile, _ in configs] == ["False", "True", "True"], out
    assert max(float(e) for _, e in configs) < 1e-4, out
