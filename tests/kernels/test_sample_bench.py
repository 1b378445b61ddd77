"""`bench.sample`: the decoder shapes it times, and one quick run of its report."""
import re

from nnunet_sss.bench import sample
from nnunet_sss.bench.network import PLANS


def test_decoder_shapes_follow_the_plan():
    assert sample.decoder_shapes(PLANS["hippocampus3d"], 2) == [
        (2, 128, (5, 7, 5), (2, 2, 2)), (2, 64, (10, 14, 10), (2, 2, 2)), (2, 32, (20, 28, 20), (2, 2, 2))]


def test_report_times_both_backends_per_decoder_stage(capsys):
    assert sample.main(["--plans", "hippocampus2d", "--batch", "1", "--repeats", "1"]) == 0
    rows = re.findall(r"hippocampus2d\s+1\s+(\d+)\s+(\S+)\s+2x2\s+(cpp|torch)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x",
                      capsys.readouterr().out)
    assert [(c, b) for c, _, b, *_ in rows] == [("128", "cpp"), ("128", "torch"), ("64", "cpp"), ("64", "torch"),
                                                 ("32", "cpp"), ("32", "torch")]
    assert all(float(ratio) == 1.0 for *_, b, _, _, ratio in rows if b == "torch")
