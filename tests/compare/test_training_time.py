"""Training wall time from nnU-Net's training_log_*.txt (format of nnUNetTrainer.print_to_log_file)."""
import pytest

from nnunet_sss.compare.efficiency import training_time, training_times

LOG = """
#######################################################################
Please cite the following paper when using nnU-Net:
#######################################################################

2026-01-02 10:00:00.000000: Using splits from existing split file: splits_final.json
2026-01-02 10:00:05.500000: Epoch 0
2026-01-02 10:00:05.500100: Current learning rate: 0.01
2026-01-02 10:00:15.000000: train_loss 0.5
2026-01-02 10:00:15.000100: Epoch time: 9.5 s
2026-01-02 10:00:15.100000: Epoch 1
2026-01-02 10:00:26.000000: Epoch time: 10.9 s
2026-01-02 10:00:30.000000: Training done.
2026-01-02 10:00:30.100000: predicting case_000
2026-01-02 10:01:00.000000: Mean Validation Dice:  0.5
"""


def test_one_log(tmp_path):
    (tmp_path / "training_log_2026_1_2_10_00_00.txt").write_text(LOG)
    got = training_time(tmp_path)
    assert got["epochs"] == 2 and got["finished"]
    assert got["epoch_time_sum_s"] == pytest.approx(20.4)
    assert got["epoch_time_median_s"] == pytest.approx(10.2)
    assert got["train_wall_s"] == pytest.approx(30.0)     # first line to "Training done."
    assert got["total_wall_s"] == pytest.approx(60.0)     # with the final validation


def test_a_resumed_training_sums_its_logs(tmp_path):
    first = LOG.split("2026-01-02 10:00:15.100000")[0]    # killed after epoch 0
    (tmp_path / "training_log_2026_1_2_10_00_00.txt").write_text(first)
    (tmp_path / "training_log_2026_1_2_11_00_00.txt").write_text(LOG.replace("10:0", "11:0"))
    got = training_time(tmp_path)
    assert got["epochs"] == 3 and got["finished"]
    assert got["train_wall_s"] == pytest.approx(30.0)     # the unfinished log has no "Training done."
    assert got["total_wall_s"] == pytest.approx(15.0001 + 60.0)


def test_missing_logs_are_reported_not_invented(tmp_path):
    (tmp_path / "fold_0").mkdir()
    (tmp_path / "fold_1").mkdir()
    (tmp_path / "fold_1" / "training_log_x.txt").write_text(LOG)
    got = training_times(tmp_path, [0, 1])
    assert "no training_log" in got["folds"]["0"]["error"]
    assert got["folds"]["1"]["train_wall_s"] == pytest.approx(30.0)
    assert got["train_wall_s_total"] is None
