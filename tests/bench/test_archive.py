"""The archive keeps a study's evidence across sessions: what the report reads, nothing else, never
overwritten; the report from an archive merged over two sessions equals the one from one folder."""
import json

import pytest

from nnunet_sss.bench import protocol
from nnunet_sss.bench.archive import archive
from nnunet_sss.bench.study import Study
from nnunet_sss.bench.study_report import build_report
from nnunet_sss.checks import UsageError

from .fake_results import (BASELINE, CONTROL, DATASET, RWKV, FakeResults, fold_cases, identifier, model_dice,
                           summary_json, write_study)


def _session(root, folds):
    fake = FakeResults(root)
    write_study(fake, folds={"2d": folds}, ensembles=False)
    for fold in folds:  # what must stay behind: checkpoints (the .npz files are written by write_study)
        (fake.dataset / identifier(RWKV, "2d") / f"fold_{fold}" / "checkpoint_final.pth").write_bytes(b"x")
    return fake


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _pooled(results, folds):
    study = Study.from_text("4", BASELINE, CONTROL, RWKV, [f"2d={','.join(map(str, folds))}"], [])
    built = build_report(study, results.parent / f"report_{results.name}", results, ensembles=False, plots=False,
                         resamples=500, progress=None)
    section = next(s for s in built["sections"] if s["configuration"] == "2d")
    return {(p["a"], p["b"], p["metric"], p["class"]): (p["mean_difference"], p["ci_low"], p["ci_high"])
            for p in section["group"]["paired"]}


def test_archive_keeps_what_the_report_reads_and_nothing_else(tmp_path):
    fake = _session(tmp_path / "a", (0, 1))
    interrupted = fake.dataset / identifier(CONTROL, "2d") / "fold_2"
    interrupted.mkdir()
    (interrupted / "checkpoint_latest.pth").write_bytes(b"x")
    plan = archive("4", tmp_path / "archive", fake.results)
    model = f"{identifier(RWKV, '2d')}"
    assert sorted(plan.new_folds) == sorted(f"{identifier(t, '2d')}/fold_{f}" for t in (BASELINE, CONTROL, RWKV)
                                            for f in (0, 1))
    assert plan.unfinished == [f"{identifier(CONTROL, '2d')}/fold_2"]
    kept = _files(tmp_path / "archive" / DATASET / model)
    assert kept == ["dataset.json", "fold_0/debug.json", "fold_0/training_log_2026_1_1_00_00_00.txt",
                    "fold_0/validation/summary.json", "fold_1/debug.json",
                    "fold_1/training_log_2026_1_1_00_00_00.txt", "fold_1/validation/summary.json", "plans.json"]
    assert not (tmp_path / "archive" / DATASET / identifier(CONTROL, "2d") / "fold_2").exists()


def test_a_report_from_two_sessions_archives_equals_the_one_from_one_results_folder(tmp_path):
    one = _session(tmp_path / "one", (0, 1, 2))  # all folds trained in one results folder
    first, second = _session(tmp_path / "first", (0, 1)), _session(tmp_path / "second", (2,))
    archive("4", tmp_path / "archive", first.results)
    plan = archive("4", tmp_path / "archive", second.results)
    assert len(plan.new_folds) == 3 and plan.kept_folds == []
    merged = _pooled(tmp_path / "archive", (0, 1, 2))
    assert merged == _pooled(one.results, (0, 1, 2))
    # the fakes' known shifts (RWKV-SSS - control: +0.02 on class 1, nnU-Net: -0.03), over the 156 cases
    assert sorted(round(v[0], 6) for k, v in merged.items() if k[2:] == ("Dice", "1")) == [-0.03, 0.02, 0.05]
    again = archive("4", tmp_path / "archive", second.results)
    assert again.new_folds == [] and len(again.kept_folds) == 3 and again.copies == []


def test_a_fold_trained_again_is_a_conflict_and_nothing_is_copied(tmp_path, capsys):
    first = _session(tmp_path / "first", (0,))
    archive("4", tmp_path / "archive", first.results)
    before = {f: (tmp_path / "archive" / f).read_bytes() for f in _files(tmp_path / "archive")}
    again = _session(tmp_path / "again", (0, 1))  # fold 0 retrained (other Dice), fold 1 new
    summary = again.dataset / identifier(RWKV, "2d") / "fold_0" / "validation" / "summary.json"
    dice = model_dice(RWKV, fold_cases(0))
    first_case = next(iter(dice))
    dice[first_case] = {k: v - 0.1 for k, v in dice[first_case].items()}
    summary.write_text(json.dumps(summary_json(dice), indent=1))
    with pytest.raises(UsageError, match=rf"{identifier(RWKV, '2d')}/fold_0: validation/summary.json differ"):
        archive("4", tmp_path / "archive", again.results)
    assert {f: (tmp_path / "archive" / f).read_bytes() for f in _files(tmp_path / "archive")} == before
    code = protocol.main(["archive", "-d", "4", "-o", str(tmp_path / "archive"), "--results_dir", str(again.results)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "fold_0" in err[0] and "nothing archived" in err[0]
