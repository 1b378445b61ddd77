"""`python -m nnunet_sss.bench.wkv_probe`: the mixing facts of networks at init and of a trained fold."""
import re

import pytest

from nnunet_sss.bench import wkv_probe


def _rows(text: str, title: str):
    """The table rows under the heading that contains `title`."""
    part = text.split(title, 1)[1].split("\n## ", 1)[0]
    return [line.split("|")[1:-1] for line in part.splitlines() if re.match(r"\| stage ", line)]


def test_arms_at_init_from_preprocessed_cases(hippocampus_subset, capsys):
    data = hippocampus_subset.dataset_preprocessed / "nnUNetPlans_2d"
    assert wkv_probe.main(["--plans", "hippocampus2d", "--arms", "wkvIdentity", "--cases", "2",
                           "--data", str(data)]) == 0
    out = capsys.readouterr().out
    defaults, identity = _rows(out, "defaults"), _rows(out, "wkvIdentity")
    assert len(defaults) == len(identity) == 8  # 4 stages x 2 layers
    assert all(float(row[5]) == 1.0 and row[6].strip() == "-" for row in identity)
    assert all(0 <= float(row[5]) < 0.5 for row in defaults)
    assert "preprocessed cases x2" in out


def test_a_trained_fold(hippocampus_rwkvsss_smoke, capsys):
    fold = hippocampus_rwkvsss_smoke.results_folder("nnUNetTrainerRWKVSSS_smoke", "2d") / "fold_0"
    assert wkv_probe.main(["--model", str(fold), "--cases", "1",
                           "--data", str(hippocampus_rwkvsss_smoke.dataset_preprocessed / "nnUNetPlans_2d")]) == 0
    rows = _rows(capsys.readouterr().out, "fold_0 (checkpoint_final.pth")
    assert rows and all(0 <= float(row[5]) <= 1.5 for row in rows)


@pytest.mark.parametrize("args, message", [
    (["--model", "/nonexistent/T__P__2d/fold_0"], "not a fold folder"),
    (["--plans", "hippocampus2d", "--data", "/nonexistent"], "no preprocessed folder"),
])
def test_bad_input_is_one_line(args, message, capsys):
    assert wkv_probe.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_nothing_to_probe_is_a_usage_error():
    with pytest.raises(SystemExit) as exit_info:
        wkv_probe.main([])
    assert exit_info.value.code == 2
