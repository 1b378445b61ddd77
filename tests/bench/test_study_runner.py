"""`protocol study` and `protocol run` with nnU-Net's commands replaced by a stand-in that records
them and writes what they would: finished folds are never trained again, interrupted ones continue
with --c, find_best_configuration runs once per fold set, a finished study reruns nothing."""
import json
import os
import shutil

import pytest

from nnunet_sss.bench import protocol
from nnunet_sss.bench import study as study_module
from nnunet_sss.bench.study import Model, Study, find_best_command

from .fake_results import (ABLATION, BASELINE, CONTROL, EPOCH_TIMES, RWKV, FakeResults, find_best, fold_cases,
                           model_dice)


def _values(command, flag):
    start = command.index(flag) + 1
    end = next((i for i in range(start, len(command)) if command[i].startswith("-")), len(command))
    return command[start:end]


def find_best_models(command):
    """(models, folds) of a find_best_configuration command, in either of its two forms."""
    if command[0] == "nnUNetv2_find_best_configuration":
        (plans,) = _values(command, "-p")
        models = [(t, plans, c) for t in _values(command, "-tr") for c in _values(command, "-c")]
        return models, tuple(int(f) for f in _values(command, "-f"))
    payload = json.loads(command[-1])
    return [(m["trainer"], m["plans"], m["configuration"]) for m in payload["models"]], tuple(payload["folds"])


class FakeNnUNet:
    """Stands in for study._call: records each command and writes what nnU-Net would have."""

    def __init__(self, fake: FakeResults, fail_at: int | None = None):
        self.fake, self.fail_at, self.commands = fake, fail_at, []

    def __call__(self, command, env):
        self.commands.append(command)
        assert env["nnUNet_n_proc_DA"] == "1"
        if len(self.commands) == self.fail_at:
            return 1
        if command[0] == "nnUNetv2_train":
            configuration, fold = command[2], int(command[3])
            trainer, plans = _values(command, "-tr")[0], _values(command, "-p")[0]
            self.fake.fold(trainer, configuration, fold, model_dice(trainer, fold_cases(fold)), plans=plans,
                           epoch_times=EPOCH_TIMES[trainer])
        else:
            find_best(self.fake, *find_best_models(command))
        return 0

    def trained(self):
        return [(_values(c, "-tr")[0], c[2], int(c[3]), "--c" in c) for c in self.commands if c[0] == "nnUNetv2_train"]


@pytest.fixture
def fake(tmp_path, monkeypatch):
    fake = FakeResults(tmp_path)
    fake.plan("nnUNetPlans")
    for name, value in fake.env().items():
        monkeypatch.setenv(name, value)
    return fake


def _study(fake, *extra):
    return protocol.main(["study", "-o", str(fake.root / "report"), "--folds", "2d=0,1", "--bootstrap", "200",
                          "--no_plots", *extra])


def test_finished_fold_is_kept_and_interrupted_fold_continues(fake, monkeypatch):
    finished = fake.fold(CONTROL, "2d", 0, model_dice(CONTROL, fold_cases(0))) / "validation" / "summary.json"
    before = (finished.read_bytes(), finished.stat().st_mtime_ns)
    interrupted = fake.model(RWKV, "2d") / "fold_0"
    interrupted.mkdir()
    (interrupted / "checkpoint_latest.pth").write_bytes(b"")
    nnunet = FakeNnUNet(fake)
    monkeypatch.setattr(study_module, "_call", nnunet)

    assert _study(fake) == 0
    assert nnunet.trained() == [(BASELINE, "2d", 0, False), (RWKV, "2d", 0, True),
                                (BASELINE, "2d", 1, False), (CONTROL, "2d", 1, False), (RWKV, "2d", 1, False)]
    for command in nnunet.commands[:-1]:
        assert command[:2] == ["nnUNetv2_train", "4"]
        assert _values(command, "-device") == ["cpu"] and "--npz" in command and _values(command, "-p") == ["nnUNetPlans"]
    assert nnunet.commands[-1] == ["nnUNetv2_find_best_configuration", "4", "-c", "2d", "-tr", BASELINE, CONTROL, RWKV,
                                   "-p", "nnUNetPlans", "-f", "0", "1"]
    assert (finished.read_bytes(), finished.stat().st_mtime_ns) == before
    assert "RWKV-SSS vs optimiser control" in (fake.root / "report" / "study.md").read_text()


def test_a_finished_study_reruns_nothing_and_a_newer_fold_reruns_find_best(fake, monkeypatch):
    monkeypatch.setattr(study_module, "_call", FakeNnUNet(fake))
    assert _study(fake) == 0
    again = FakeNnUNet(fake)
    monkeypatch.setattr(study_module, "_call", again)
    (fake.root / "report" / "study.md").unlink()
    assert _study(fake) == 0
    assert again.commands == []
    assert (fake.root / "report" / "study.md").is_file()   # the report is rebuilt all the same

    summary = fake.dataset / f"{RWKV}__nnUNetPlans__2d" / "fold_1" / "validation" / "summary.json"
    later = summary.stat().st_mtime + 60   # its validation was redone (nnUNetv2_train --val) after the ensembles
    os.utime(summary, (later, later))
    assert _study(fake) == 0
    assert [c[0] for c in again.commands] == ["nnUNetv2_find_best_configuration"]


def test_a_failed_training_stops_the_study_with_its_exit_code(fake, monkeypatch, capsys):
    nnunet = FakeNnUNet(fake, fail_at=2)
    monkeypatch.setattr(study_module, "_call", nnunet)
    assert _study(fake) == 1
    assert len(nnunet.commands) == 2 and not (fake.root / "report").exists()
    assert "rerun the same command to continue" in capsys.readouterr().err


def test_dry_run_checks_and_prints_but_runs_nothing(fake, monkeypatch, capsys):
    interrupted = fake.model(RWKV, "2d") / "fold_1"
    interrupted.mkdir()
    (interrupted / "checkpoint_final.pth").write_bytes(b"")
    monkeypatch.setattr(study_module, "_call", lambda command, env: pytest.fail(f"ran {command}"))
    assert _study(fake, "--dry_run") == 0
    out = capsys.readouterr().out
    assert f"would run (interrupted): nnUNetv2_train 4 2d 1 -tr {RWKV} -p nnUNetPlans -device cpu --npz --c" in out
    assert out.count("would run (new)") == 5
    assert "would run: nnUNetv2_find_best_configuration 4 -c 2d" in out
    assert not (fake.root / "report").exists()


def test_run_action_keeps_finished_folds_and_continues_interrupted_ones(fake, monkeypatch):
    fake.fold(BASELINE, "3d_fullres", 0, model_dice(BASELINE, fold_cases(0)))
    (fake.model(RWKV, "3d_fullres") / "fold_0").mkdir()
    (fake.model(RWKV, "3d_fullres") / "fold_0" / "checkpoint_latest.pth").write_bytes(b"")
    nnunet = FakeNnUNet(fake)
    monkeypatch.setattr(study_module, "_call", nnunet)
    assert protocol.main(["run", "-c", "3d_fullres", "-f", "0", "-tr", BASELINE, RWKV]) == 0
    assert nnunet.trained() == [(RWKV, "3d_fullres", 0, True)]


def test_three_fold_3d_gets_its_own_find_best_folds():
    study = Study.from_text("4", BASELINE, CONTROL, RWKV, ["2d=0-4", "3d_fullres=0,1,2"])
    (two_d, folds_2d), (both, common) = study.find_best_calls()
    assert [m.configuration for m in two_d] == ["2d"] * 3 and folds_2d == (0, 1, 2, 3, 4)
    assert common == (0, 1, 2)
    assert both == [Model(t, "nnUNetPlans", c) for t in (BASELINE, CONTROL, RWKV) for c in ("2d", "3d_fullres")]
    assert find_best_command("4", both, common)[:9] == ["nnUNetv2_find_best_configuration", "4", "-c", "2d",
                                                        "3d_fullres", "-tr", BASELINE, CONTROL, RWKV]


def test_trainers_with_plans_of_their_own_go_to_find_best_by_their_model_list():
    study = Study.from_text("4", BASELINE, CONTROL, f"{RWKV}:nnUNetPlans_RWKVSSS_S", ["2d=0,1"])
    ((models, folds),) = study.find_best_calls()
    command = find_best_command("4", models, folds, num_processes=2)
    assert command[0] != "nnUNetv2_find_best_configuration"   # its -tr x -p product would ask for models not trained
    assert find_best_models(command) == ([(BASELINE, "nnUNetPlans", "2d"), (CONTROL, "nnUNetPlans", "2d"),
                                          (RWKV, "nnUNetPlans_RWKVSSS_S", "2d")], (0, 1))
    assert json.loads(command[-1])["np"] == 2


def test_arms_train_after_the_references_of_each_of_their_folds():
    study = Study.from_text("4", BASELINE, CONTROL, RWKV, ["2d=0-4", "3d_fullres=0-2"],
                            [ABLATION, f"{ABLATION}_other:P@3d_fullres=1,2@2d=4"], ["2d=0,1"])
    trainings = study.trainings()
    assert len(trainings) == 3 * 5 + 3 * 3 + 2 + 3
    refs = [Model(t, "nnUNetPlans", c) for c in ("2d", "3d_fullres") for t in (BASELINE, CONTROL, RWKV)]
    arm, other = Model(ABLATION, "nnUNetPlans", "2d"), Model(f"{ABLATION}_other", "P", "2d")
    other3d = Model(f"{ABLATION}_other", "P", "3d_fullres")
    assert trainings == [*((m, 0) for m in refs[:3]), (arm, 0), *((m, 1) for m in refs[:3]), (arm, 1),
                         *((m, 2) for m in refs[:3]), *((m, 3) for m in refs[:3]), *((m, 4) for m in refs[:3]),
                         (other, 4), *((m, 0) for m in refs[3:]), *((m, 1) for m in refs[3:]), (other3d, 1),
                         *((m, 2) for m in refs[3:]), (other3d, 2)]
    assert list(study.screens()) == [("2d", (0, 1)), ("3d_fullres", (1, 2)), ("2d", (4,))]
    assert Study.from_text("4", BASELINE, CONTROL, RWKV, ["2d=0-4", "3d_fullres=0-2"],
                           [ABLATION], ["2d=0,1"]).as_args()[-2:] == ["--arm", f"{ABLATION}:nnUNetPlans@2d=0,1"]


def test_run_with_an_archive_skips_archived_folds_and_archives_each_fold_as_it_finishes(fake, monkeypatch, tmp_path):
    archive = tmp_path / "evidence"
    fake.fold(CONTROL, "2d", 0, model_dice(CONTROL, fold_cases(0)))  # finished before: archived when the run meets it
    nnunet = FakeNnUNet(fake)
    monkeypatch.setattr(study_module, "_call", nnunet)
    assert protocol.main(["run", "-c", "2d", "-f", "0", "-tr", CONTROL, RWKV, "--archive", str(archive)]) == 0
    assert nnunet.trained() == [(RWKV, "2d", 0, False)]
    dataset = archive / fake.dataset.name
    assert all((dataset / f"{t}__nnUNetPlans__2d" / "fold_0" / "validation" / "summary.json").is_file()
               for t in (CONTROL, RWKV))
    # a later session: a fresh results folder, the archive kept; archived folds are not trained again
    shutil.rmtree(fake.dataset)
    again = FakeNnUNet(fake)
    monkeypatch.setattr(study_module, "_call", again)
    assert protocol.main(["run", "-c", "2d", "-f", "0", "1", "-tr", CONTROL, RWKV, "--archive", str(archive)]) == 0
    assert again.trained() == [(CONTROL, "2d", 1, False), (RWKV, "2d", 1, False)]
    assert (dataset / f"{RWKV}__nnUNetPlans__2d" / "fold_1" / "debug.json").is_file()


def test_a_study_with_an_archive_ensembles_each_fold_when_whole_and_reports_from_the_archive(fake, monkeypatch,
                                                                                              tmp_path, capsys):
    archive = tmp_path / "evidence"
    nnunet = FakeNnUNet(fake)
    monkeypatch.setattr(study_module, "_call", nnunet)
    assert _study(fake, "--archive", str(archive)) == 0
    steps = ["train" if c[0] == "nnUNetv2_train" else find_best_models(c)[1] for c in nnunet.commands]
    assert steps == ["train"] * 3 + [(0,)] + ["train"] * 3 + [(1,)]  # each fold ensembled once its three are done
    ensembles = archive / fake.dataset.name / "ensembles"
    assert [len(list(ensembles.glob(f"ensemble___*___{f}"))) for f in (0, 1)] == [3, 3]
    built = json.loads((fake.root / "report" / "study.json").read_text())
    paired = built["sections"][0]["group"]["paired"]
    ensemble = f"ensemble({BASELINE} + {RWKV})"
    gain = next(p for p in paired if p["a"] == RWKV and p["b"] == ensemble and p["class"] == "foreground_mean"
                and p["metric"] == "Dice")
    assert gain["n"] == 104 and gain["mean_difference"] == pytest.approx(0.01, abs=1e-12)  # both folds, pooled
    assert any("fold by fold" in note for note in built["notes"])
    # a later session: the models are gone, the archive kept; nothing is trained again, the report is rebuilt
    shutil.rmtree(fake.dataset)
    monkeypatch.setattr(study_module, "_call", lambda command, env: pytest.fail(f"ran {command}"))
    (fake.root / "report" / "study.md").unlink()
    assert _study(fake, "--archive", str(archive)) == 0
    assert (fake.root / "report" / "study.md").is_file()


def test_a_fold_whose_reference_came_from_the_archive_is_named_not_ensembled(fake, monkeypatch, tmp_path, capsys):
    archive = tmp_path / "evidence"
    monkeypatch.setattr(study_module, "_call", FakeNnUNet(fake))
    assert protocol.main(["run", "-c", "2d", "-f", "0", "-tr", BASELINE, "--archive", str(archive)]) == 0
    shutil.rmtree(fake.dataset / f"{BASELINE}__nnUNetPlans__2d")  # the next session: nnU-Net's fold 0 is archived only
    nnunet = FakeNnUNet(fake)
    monkeypatch.setattr(study_module, "_call", nnunet)
    assert _study(fake, "--archive", str(archive), "--folds", "2d=0") == 2  # the report lacks fold 0's ensembles
    err = capsys.readouterr().err
    assert f"2d fold 0 cannot be ensembled: {BASELINE}__nnUNetPlans__2d was trained in an earlier session" in err
    assert "no ensemble of" in err and [c[0] for c in nnunet.commands] == ["nnUNetv2_train"] * 2


def test_a_control_from_the_archive_leaves_out_only_its_own_ensembles(fake, monkeypatch, tmp_path, capsys):
    archive = tmp_path / "evidence"
    monkeypatch.setattr(study_module, "_call", FakeNnUNet(fake))
    assert protocol.main(["run", "-c", "2d", "-f", "0", "-tr", CONTROL, "--archive", str(archive)]) == 0
    shutil.rmtree(fake.dataset)  # the next session: the control's fold 0 is archived only
    nnunet = FakeNnUNet(fake)
    monkeypatch.setattr(study_module, "_call", nnunet)
    assert _study(fake, "--archive", str(archive), "--folds", "2d=0") == 0
    assert "came from the archive; its ensembles are left out" in capsys.readouterr().err
    steps = ["train" if c[0] == "nnUNetv2_train" else find_best_models(c) for c in nnunet.commands]
    assert steps == ["train", "train", ([(BASELINE, "nnUNetPlans", "2d"), (RWKV, "nnUNetPlans", "2d")], (0,))]
    names = sorted(p.name for p in (archive / fake.dataset.name / "ensembles").iterdir())
    assert names == [f"ensemble___{BASELINE}__nnUNetPlans__2d___{RWKV}__nnUNetPlans__2d___0"]
