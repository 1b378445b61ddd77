"""`bench.wkv --gpu-configs` text -> Triton Launch, and its error on bad text."""
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
