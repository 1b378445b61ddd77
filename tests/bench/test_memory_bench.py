"""`python -m nnunet_sss.bench.memory`: the planner's memory model against a measured training peak."""
import json

from nnunet_sss.bench import memory


def test_the_model_is_within_its_goal_of_a_measured_peak_and_planned_rows_grow(tmp_path, capsys):
    rows_file = tmp_path / "rows.json"
    assert memory.main(["--plans", "hippocampus2d", "--batch", "4", "--device", "cpu",
                        "--json", str(rows_file)]) == 0
    assert "| hippocampus2d | 56x40 | 4 |" in capsys.readouterr().out
    measured = json.loads(rows_file.read_text())[0]
    assert abs(measured["measured"] / measured["estimate"] - 1) <= memory.GOAL, measured
    assert memory.main(["--plans", "--planned", "4", "8", "--model-only", "--json", str(rows_file)]) == 0
    planned = json.loads(rows_file.read_text())
    assert [row["plan"] for row in planned] == ["planned4gb", "planned8gb"]
    assert all(row["measured"] is None for row in planned)
    assert planned[0]["estimate"] < planned[1]["estimate"] <= 8 * 2 ** 30
