"""Checks of what a user hands in, and UsageError, the one exception they raise.

A UsageError is a failure the user caused and can fix: its message names the problem and what
to do, in one line. `nnunet-sss` (cli.py) prints it as `nnunet-sss <command>: <message>` and
exits 2; any other exception is a bug and keeps its traceback. Standard library only, so that
every layer may import this module.
"""
import json
import os
from pathlib import Path
from typing import Mapping, Union

PathLike = Union[str, "os.PathLike[str]"]

# nnU-Net's folder variables and what each holds
NNUNET_FOLDERS = {
    "nnUNet_raw": "the folder of the raw datasets (DatasetXXX_Name with dataset.json, imagesTr, labelsTr)",
    "nnUNet_preprocessed": "the folder nnUNetv2_plan_and_preprocess writes to",
    "nnUNet_results": "the folder nnUNetv2_train writes to",
}


class UsageError(Exception):
    """A failure the user caused: the message says what is wrong and what to do, in one line."""


def nnunet_folder(variable: str, environ: Mapping[str, str] = os.environ) -> Path:
    """The folder an nnU-Net variable names; a UsageError if it is unset or not a folder."""
    value = environ.get(variable)
    what = NNUNET_FOLDERS[variable]
    if not value:
        raise UsageError(f"{variable} is not set: export {variable}=/path/to/{variable} ({what})")
    if not os.path.isdir(value):
        raise UsageError(f"{variable}={value} is not a folder: create it (mkdir -p {value}) or point {variable} "
                         f"at {what}")
    return Path(value)


def dataset_folder(root: Path, dataset: Union[str, int], where: str, hint: str) -> Path:
    """root/DatasetXXX_Name for nnU-Net's `-d`: an ID (4) or a full name (Dataset004_Hippocampus).
    A UsageError names the datasets `root` holds when none fits; `where` names `root` for the
    user (e.g. "nnUNet_results"), `hint` says how to make the dataset appear there."""
    text = str(dataset).strip()
    if text.startswith("Dataset"):
        names = [text] if (root / text).is_dir() else []
    else:
        try:
            prefix = f"Dataset{int(text):03d}_"
        except ValueError:
            raise UsageError(f"dataset {text!r} is neither an ID (4) nor a name (Dataset004_Hippocampus)") from None
        names = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith(prefix))
        if len(names) > 1:
            raise UsageError(f"{len(names)} datasets with ID {text} in {root} ({', '.join(names)}): "
                             f"give the full name")
    if not names:
        held = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("Dataset"))
        raise UsageError(f"no dataset {text} in {where} ({root} holds {', '.join(held) or 'no dataset'}): {hint}")
    return root / names[0]


def read_json(path: PathLike, what: str) -> dict:
    """The JSON object in `path`; a UsageError naming the file if it is missing or not a JSON object."""
    try:
        with open(path) as f:
            value = json.load(f)
    except FileNotFoundError:
        raise UsageError(f"no {what} {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UsageError(f"{what} {path} is not valid JSON ({error}): fix or regenerate it") from None
    if not isinstance(value, dict):
        raise UsageError(f"{what} {path} holds a JSON {type(value).__name__}, not an object: fix or regenerate it")
    return value


def writable_folder(path: PathLike, what: str) -> Path:
    """Make `path` (and its parents) if needed and check that files can be written in it; a
    UsageError naming the folder if not. Done before any long work, so that it is not lost."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".nnunet_sss_write_test_{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise UsageError(f"cannot write the {what} {folder} ({reason}): choose a folder you can write to") from None
    return folder


def int_at_least(minimum: int):
    """An argparse `type`: an integer >= minimum, refused in argparse's one line otherwise."""
    import argparse

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse
