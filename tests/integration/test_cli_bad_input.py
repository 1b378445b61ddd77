"""Every failure a user can cause in `nnunet-sss` is one line on stderr that names the problem and
what to do, with a non-zero exit status (2; 1 for `env --check`), never a traceback. Each case
runs the installed console script, as a user would, against small folders made here."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nnunet_sss.env import ext_trainer_folder
from nnunet_sss.phantom import write_fingerprinted_dataset
from nnunet_sss.plans import PRESETS, rwkvsss_options

from .handwritten_plans import DATASET_JSON, handwritten_plans

BIN = Path(sys.executable).parent
DATASET = "Dataset004_Hippocampus"
FINGERPRINTED = 903  # known to nnU-Net by its fingerprint (median image 16x24x16), in the world's sized/ folders
SIZED = {"nnUNet_raw": "{root}/sized/raw", "nnUNet_preprocessed": "{root}/sized/preprocessed"}
TRAINERS = ("nnUNetTrainer", "nnUNetTrainerRWKVSSS")
SUMMARY = {"metric_per_case": [{"prediction_file": "/p/case_0.nii.gz", "reference_file": "/r/case_0.nii.gz",
                                "metrics": {"1": {"Dice": 0.5}, "2": {"Dice": 0.7}}}],
           "mean": {"1": {"Dice": 0.5}, "2": {"Dice": 0.7}}, "foreground_mean": {"Dice": 0.6}}


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """nnU-Net folders holding one dataset (plans, two trained models on fold 0), broken files
    beside the good ones, a plain file where a folder is expected, and user datasets for the demo."""
    root = tmp_path_factory.mktemp("bad_input")
    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (root / variable).mkdir()
    pre = root / "nnUNet_preprocessed" / DATASET
    _write(pre / "nnUNetPlans.json", json.dumps(handwritten_plans()))
    _write(pre / "brokenPlans.json", '{"configurations": {')
    _write(pre / "listPlans.json", "[1, 2]")
    _write(pre / "notPlans.json", json.dumps({"plans_name": "notPlans"}))
    (pre / "nnUNetPlans_taken.json").mkdir()  # the target of `-o nnUNetPlans_taken` cannot be written
    write_fingerprinted_dataset(root / "sized" / "raw", root / "sized" / "preprocessed", FINGERPRINTED, "Small",
                                (16, 24, 16), (1.0, 1.0, 1.0), num_train=51)
    results = root / "nnUNet_results" / DATASET
    for trainer in (*TRAINERS, "brokenTrainer"):
        model = results / f"{trainer}__nnUNetPlans__3d_fullres"
        _write(model / "dataset.json", json.dumps(DATASET_JSON))
        summary = json.dumps(SUMMARY) if trainer != "brokenTrainer" else '{"metric_per_case": ['
        _write(model / "fold_0" / "validation" / "summary.json", summary)
    _write(root / "a_file", "not a folder")
    for name, files in {"Dataset123_NoJson": {}, "Dataset124_BadJson": {"dataset.json": "{"},
                        "Dataset125_NoLabels": {"dataset.json": json.dumps({"numTraining": 1})},
                        "my_images": {"dataset.json": json.dumps(DATASET_JSON)}}.items():
        for sub in ("imagesTr", "labelsTr"):
            (root / name / sub).mkdir(parents=True)
        for file, text in files.items():
            _write(root / name / file, text)
    _write(root / "old_demo" / "logs" / "demo_settings.json",
           json.dumps({"dataset": "phantom", "budget": "demo", "seed": 7, "configuration": "3d_fullres"}))
    return root


UNSET = None
COMPARE = ["compare", "-d", "4", "-tr", *TRAINERS, "-f", "0", "--no_benchmark", "-o", "{root}/report"]

# (id, arguments ({root} is the world's folder), environment changes (UNSET removes), exit status,
#  what the one line must say)
CASES = [
    # nnunet-sss itself
    ("no-subcommand", [], {}, 2, r"^nnunet-sss: the following arguments are required: command \(see nnunet-sss --help\)$"),
    ("unknown-subcommand", ["train"], {}, 2, r"invalid choice: 'train'"),
    # env --check: each variable unset or naming no folder
    ("env-extTrainer-unset", ["env", "--check"], {"nnUNet_extTrainer": UNSET}, 1,
     r"nnUNet_extTrainer is not set.*export nnUNet_extTrainer="),
    ("env-extTrainer-elsewhere", ["env", "--check"], {"nnUNet_extTrainer": "{root}"}, 1,
     r"does not list .*nnunet_ext.*export nnUNet_extTrainer="),
    *[(f"env-{variable}-{how}", ["env", "--check"], {variable: value}, 1, message)
      for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
      for how, value, message in (("unset", UNSET, rf"{variable} is not set: export {variable}="),
                                  ("missing", "{root}/nowhere", rf"{variable}=.*/nowhere is not a folder: "
                                                                rf"create it \(mkdir -p .*\) or point {variable}"))],
    ("env-unknown-flag", ["env", "--chek"], {}, 2, r"unrecognized arguments: --chek"),
    # plans
    ("plans-unknown-id", ["plans", "-d", "999"], {}, 2,
     rf"no dataset 999 in nnUNet_preprocessed \(.* holds {DATASET}\): run nnUNetv2_plan_and_preprocess -d 999"),
    ("plans-unknown-name", ["plans", "-d", "Dataset999_Nope"], {}, 2, r"no dataset Dataset999_Nope in nnUNet_preprocessed"),
    ("plans-not-an-id", ["plans", "-d", "four"], {}, 2, r"dataset 'four' is neither an ID \(4\) nor a name"),
    ("plans-preprocessed-unset", ["plans", "-d", "4"], {"nnUNet_preprocessed": UNSET}, 2,
     r"nnUNet_preprocessed is not set: export nnUNet_preprocessed="),
    ("plans-preprocessed-missing", ["plans", "-d", "4"], {"nnUNet_preprocessed": "{root}/nowhere"}, 2,
     r"nnUNet_preprocessed=.*nowhere is not a folder"),
    ("plans-preprocessed-is-a-file", ["plans", "-d", "4"], {"nnUNet_preprocessed": "{root}/a_file"}, 2,
     r"nnUNet_preprocessed=.*a_file is not a folder"),
    ("plans-source-missing", ["plans", "-d", "4", "-p", "otherPlans"], {}, 2,
     r"no plans .*otherPlans\.json: run nnUNetv2_plan_and_preprocess -d 4 first"),
    ("plans-not-json", ["plans", "-d", "4", "-p", "brokenPlans"], {}, 2, r"brokenPlans\.json is not valid JSON"),
    ("plans-json-list", ["plans", "-d", "4", "-p", "listPlans"], {}, 2, r"listPlans\.json holds a JSON list"),
    ("plans-not-plans", ["plans", "-d", "4", "-p", "notPlans"], {}, 2, r"holds no 'configurations': not nnU-Net plans"),
    ("plans-unknown-option", ["plans", "-d", "4", "--set", "windoww=3"], {}, 2,
     r"argument --set: expected OPTION=VALUE with OPTION one of \[.*'global_window'.*got 'windoww=3'"),
    ("plans-option-without-value", ["plans", "-d", "4", "--set", "scan"], {}, 2, r"argument --set: expected OPTION=VALUE"),
    ("plans-unknown-value", ["plans", "-d", "4", "--set", "scan=bogus"], {}, 2,
     r"--set scan=\"bogus\": the network refuses it for configuration .*unknown scan 'bogus'"),
    ("plans-value-of-wrong-type", ["plans", "-d", "4", "--set", "hidden_ratio=wide"], {}, 2,
     r"--set hidden_ratio=\"wide\": the network refuses it"),
    ("plans-value-for-other-stages", ["plans", "-d", "4", "--set", "rwkv_depths=[1,1]"], {}, 2,
     r"--set rwkv_depths=\[1, 1\]: the network refuses it .*rwkv_depths needs one entry per stage"),
    ("plans-unknown-size", ["plans", "-d", "4", "--size", "XL"], {}, 2, r"argument --size: invalid choice: 'XL'"),
    ("plans-unknown-memory-preset", ["plans", "-d", "4", "--preset", "XXL"], {}, 2,
     r"argument --preset: invalid choice: 'XXL': the GPU memory preset is one of M, L, XL \(8 / 24 / 40 GB\); "
     r"the network size is --size S\|M\|L"),
    ("plans-old-size-spelling-and-other-size", ["plans", "-d", "4", "--preset", "S", "--size", "M"], {}, 2,
     r"--preset S \(the old spelling of --size S\) contradicts --size M: give --size only"),
    ("plans-overwrite-source", ["plans", "-d", "4", "-o", "nnUNetPlans"], {}, 2, r"must not overwrite the source plans"),
    ("plans-name-with-double-underscore", ["plans", "-d", "4", "-o", "my__plans"], {}, 2,
     r"plans identifier 'my__plans': give a bare name"),
    ("plans-name-with-path", ["plans", "-d", "4", "-o", "../elsewhere"], {}, 2, r"plans identifier '\.\./elsewhere'"),
    ("plans-cannot-write", ["plans", "-d", "4", "-o", "nnUNetPlans_taken"], {}, 2,
     r"cannot write .*nnUNetPlans_taken\.json \(Is a directory\)"),
    ("plans-existing", ["plans", "-d", "4", "-o", "notPlans"], {}, 2, r"notPlans\.json exists: pass --overwrite"),
    ("plans-memory-not-fingerprinted", ["plans", "-d", "4", "--preset", "M"], {}, 2,
     r"has not been fingerprinted by nnU-Net: run nnUNetv2_plan_and_preprocess -d 4 first"),
    ("plans-memory-with-source", ["plans", "-d", "4", "-p", "nnUNetPlans", "--gpu-memory-target", "8"], {}, 2,
     r"-p converts existing plans, a memory target plans afresh .*: give one or the other"),
    ("plans-memory-target-zero", ["plans", "-d", "4", "--gpu-memory-target", "0"], {}, 2,
     r"argument --gpu-memory-target: must be more than 0 GB, got 0"),
    ("plans-memory-below-smallest-patch", ["plans", "-d", str(FINGERPRINTED), "--gpu-memory-target", "0.3"], SIZED,
     2, r"^nnunet-sss plans: 0\.3 GB of GPU memory is below what RWKV-SSS training needs for its smallest valid 3D "
        r"patch \([\dx]+, batch 2\): (0\.[4-9]|[1-9][\d.]*) GB; give --gpu-memory-target \1 or more$"),
    # compare
    ("compare-results-unset", COMPARE, {"nnUNet_results": UNSET}, 2, r"no results folder: pass --results_dir or set nnUNet_results"),
    ("compare-results-missing", COMPARE, {"nnUNet_results": "{root}/nowhere"}, 2, r"results folder .*nowhere is not a folder"),
    ("compare-results-dir-missing", [*COMPARE, "--results_dir", "{root}/nowhere"], {}, 2, r"nowhere is not a folder"),
    ("compare-unknown-dataset", ["compare", "-d", "999", *COMPARE[3:]], {}, 2,
     rf"no dataset 999 in the results folder \(.* holds {DATASET}\): train it first"),
    ("compare-unknown-trainer", ["compare", "-d", "4", "-tr", "nnUNetTrainer", "nnUNetTrainerNope", *COMPARE[6:]], {}, 2,
     r"nnUNetTrainerNope__nnUNetPlans__3d_fullres: no results folder .* \(not trained\?\)"),
    ("compare-unknown-configuration", [*COMPARE, "-c", "2d"], {}, 2,
     r"nnUNetTrainer__nnUNetPlans__2d: no results folder"),
    ("compare-unknown-plans", [*COMPARE, "-p", "otherPlans"], {}, 2, r"nnUNetTrainer__otherPlans__3d_fullres: no results"),
    ("compare-missing-fold", [*COMPARE, "-f", "0", "1"], {}, 2, r"fold 1: fold folder missing \(not trained\)"),
    ("compare-summary-not-json", ["compare", "-d", "4", "-tr", "nnUNetTrainer", "brokenTrainer", *COMPARE[6:]], {}, 2,
     r"summary\.json is not valid JSON"),
    ("compare-one-model", ["compare", "-d", "4", "-tr", "nnUNetTrainer", *COMPARE[6:]], {}, 2, r"need at least two models"),
    ("compare-missing-test-folder", [*COMPARE, "--test", "mine={root}/nowhere"], {}, 2,
     r"mine: prediction folder .*nowhere does not exist"),
    ("compare-cannot-write", [*COMPARE, "-o", "{root}/a_file/report"], {}, 2,
     r"cannot write the output folder \(-o\) .*a_file/report \(Not a directory\)"),
    ("compare-no-bootstrap", [*COMPARE, "--bootstrap", "0"], {}, 2, r"argument --bootstrap: must be at least 1, got 0"),
    ("compare-steps-not-a-number", [*COMPARE, "--bench_steps", "many"], {}, 2, r"expected an integer, got 'many'"),
    # demo (each refused before any step runs)
    ("demo-dataset-missing", ["demo", "-o", "{root}/demo", "--dataset", "{root}/Dataset222_Nowhere"], {}, 2,
     r"--dataset .*Dataset222_Nowhere: no such folder"),
    ("demo-dataset-misnamed", ["demo", "-o", "{root}/demo", "--dataset", "{root}/my_images"], {}, 2,
     r"the folder must be named DatasetXXX_Name"),
    ("demo-dataset-without-json", ["demo", "-o", "{root}/demo", "--dataset", "{root}/Dataset123_NoJson"], {}, 2,
     r"Dataset123_NoJson: no dataset\.json \(not an nnU-Net raw dataset\)"),
    ("demo-dataset-json-broken", ["demo", "-o", "{root}/demo", "--dataset", "{root}/Dataset124_BadJson"], {}, 2,
     r"Dataset124_BadJson/dataset\.json is not valid JSON"),
    ("demo-dataset-json-incomplete", ["demo", "-o", "{root}/demo", "--dataset", "{root}/Dataset125_NoLabels"], {}, 2,
     r"dataset\.json lacks labels, file_ending, channel_names"),
    ("demo-cannot-write", ["demo", "-o", "{root}/a_file/demo"], {}, 2, r"cannot write the output folder \(-o\)"),
    ("demo-unknown-trainer", ["demo", "-o", "{root}/demo", "-tr", "nnUNetTrainer", "nnUNetTrainerNope"], {}, 2,
     r"no trainer nnUNetTrainerNope_demo in nnunet_sss\.training"),
    ("demo-other-settings", ["demo", "-o", "{root}/old_demo", "--budget", "tiny"], {}, 2,
     r"holds a demo run with other settings \(budget: demo -> tiny, seed: 7 -> 0\); use another -o"),
    ("demo-no-workers", ["demo", "-o", "{root}/demo", "-np", "0"], {}, 2, r"argument -np: must be at least 1, got 0"),
    ("demo-unknown-budget", ["demo", "-o", "{root}/demo", "--budget", "huge"], {}, 2, r"argument --budget: invalid choice"),
]


def _nnunet_sss(world, args, environ):
    """The installed `nnunet-sss ARGS` run in the world's nnU-Net folders with `environ`'s changes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    env.update(nnUNet_raw=str(world / "nnUNet_raw"), nnUNet_preprocessed=str(world / "nnUNet_preprocessed"),
               nnUNet_results=str(world / "nnUNet_results"), nnUNet_extTrainer=ext_trainer_folder())
    for variable, value in environ.items():
        env.pop(variable)
        if value is not UNSET:
            env[variable] = value.format(root=world)
    return subprocess.run([str(BIN / "nnunet-sss"), *(a.format(root=world) for a in args)], env=env,
                          capture_output=True, text=True, timeout=300, cwd=world)


@pytest.mark.parametrize("args,environ,code,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_a_non_zero_exit(world, args, environ, code, message):
    proc = _nnunet_sss(world, args, environ)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert re.match(r"nnunet-sss( (env --check|plans|compare|demo))?: ", lines[0]), lines[0]
    assert re.search(message, lines[0]), lines[0]
    assert proc.returncode == code, proc.stderr


def test_existing_plans_are_refused_and_left_byte_identical(world):
    """Plans of a name that exists are replaced only with --overwrite: without it, the memory planner
    (its default name, and -o) and the conversion are refused in one line and change nothing."""
    folder = world / "sized" / "preprocessed" / f"Dataset{FINGERPRINTED:03d}_Small"
    first = _nnunet_sss(world, ["plans", "-d", str(FINGERPRINTED), "--preset", "M"], SIZED)
    assert first.returncode == 0, first.stderr
    written = Path(first.stdout.strip())
    assert written == folder / "nnUNetRWKVSSSPlans_S_8GB.json"
    _write(folder / "nnUNetPlans.json", json.dumps(handwritten_plans()))  # for the conversion
    before = {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()}
    for args in (["--preset", "M"], ["--gpu-memory-target", "3", "-o", written.stem],
                 ["--gpu-memory-target", "8", "--size", "M", "-o", written.stem], ["-o", written.stem]):
        proc = _nnunet_sss(world, ["plans", "-d", str(FINGERPRINTED), *args], SIZED)
        assert proc.returncode == 2 and proc.stdout == "", (args, proc.stderr)
        assert proc.stderr == f"nnunet-sss plans: {written} exists: pass --overwrite to replace it, or name the new " \
                              f"plans with -o\n", args
        assert {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()} == before, args
    replaced = _nnunet_sss(world, ["plans", "-d", str(FINGERPRINTED), "--preset", "M", "--size", "M",
                                   "-o", written.stem, "--overwrite"], SIZED)
    assert replaced.returncode == 0, replaced.stderr
    depths = [rwkvsss_options(json.loads(text)["configurations"]["3d_fullres"]["architecture"])["rwkv_depths"]
              for text in (before[written.name], written.read_bytes())]
    assert depths == [PRESETS["S"]["rwkv_depths"], PRESETS["M"]["rwkv_depths"]]


def test_a_bug_keeps_its_traceback(world, tmp_path):
    """Not every exception is the user's: one that is not a UsageError prints Python's traceback."""
    script = tmp_path / "bug.py"
    script.write_text("import sys\nimport nnunet_sss.compare.comparison as c\n"
                      "def broken(*a, **k):\n    raise ZeroDivisionError('a bug')\n"
                      "c.run_comparison = broken\nfrom nnunet_sss.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    proc = subprocess.run([sys.executable, str(script), *(a.format(root=world) for a in COMPARE)],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, nnUNet_results=str(world / "nnUNet_results")))
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "ZeroDivisionError: a bug" in proc.stderr
