"""`nnunet-sss env`: the nnUNet_extTrainer line to export, and a check of nnU-Net's set-up.

nnU-Net finds trainers outside its own package only through the folder(s) listed in
nnUNet_extTrainer. `eval "$(nnunet-sss env)"` sets it for this shell (stdout holds nothing but
the export line); `nnunet-sss env --check` says what is wrong, one line per problem, and exits
non-zero if the RWKV-SSS trainers cannot be found or nnUNet_raw, nnUNet_preprocessed or
nnUNet_results is unset or not a folder.
"""
import contextlib
import io
import os
import shlex
import sys
from typing import List, Mapping, Optional

from nnunet_sss.checks import NNUNET_FOLDERS, UsageError, nnunet_folder

VARIABLE = "nnUNet_extTrainer"
PROBE_TRAINER = "nnUNetTrainerRWKVSSS"


def ext_trainer_folder() -> str:
    """Absolute path of the package's re-export folder, nnunet_sss/nnunet_ext."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "nnunet_ext")


def _lists_folder(value: Optional[str]) -> bool:
    folder = os.path.realpath(ext_trainer_folder())
    return any(p.strip() and os.path.realpath(p) == folder for p in (value or "").split(os.pathsep))


def export_value(environ: Mapping[str, str] = os.environ) -> str:
    """The value to export: the re-export folder, ahead of any folders already listed."""
    current = environ.get(VARIABLE) or ""
    if _lists_folder(current):
        return current
    return os.pathsep.join([ext_trainer_folder()] + [p for p in current.split(os.pathsep) if p.strip()])


def export_line(environ: Mapping[str, str] = os.environ) -> str:
    return f"export {VARIABLE}={shlex.quote(export_value(environ))}"


def problem(environ: Mapping[str, str] = os.environ) -> Optional[str]:
    """None if nnUNet_extTrainer lists the re-export folder, else what is wrong and the fix."""
    value = environ.get(VARIABLE)
    if value is None:
        what = f"{VARIABLE} is not set, so nnU-Net cannot find the RWKV-SSS trainers"
    elif not _lists_folder(value):
        what = f"{VARIABLE}={value!r} does not list {ext_trainer_folder()}, so nnU-Net cannot find the RWKV-SSS trainers"
    else:
        return None
    return f"{what}; set it with: {export_line(environ)} (or: eval \"$(nnunet-sss env)\")"


def require_ext_trainer(environ: Mapping[str, str] = os.environ) -> None:
    """Raise a UsageError naming nnUNet_extTrainer and the export line if it is not set right."""
    message = problem(environ)
    if message:
        raise UsageError(message)


def folder_problems(environ: Mapping[str, str] = os.environ) -> List[str]:
    """What is wrong with nnU-Net's folder variables (unset, or not naming a folder), one line each."""
    found = []
    for variable in NNUNET_FOLDERS:
        try:
            nnunet_folder(variable, environ)
        except UsageError as error:
            found.append(str(error))
    return found


def lookup_problem() -> Optional[str]:
    """Ask nnU-Net's own lookup for the RWKV-SSS trainer; None if it returns the package's class."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from nnunet_sss.training import TRAINERS

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net narrates its search
            found = recursive_find_trainer_class_by_name(PROBE_TRAINER)
    except Exception as error:  # nnU-Net imports every module of every listed folder
        return f"nnU-Net's trainer lookup failed: {type(error).__name__}: {' '.join(str(error).split())}"
    if found is not TRAINERS[PROBE_TRAINER]:
        return (f"nnU-Net found {PROBE_TRAINER} in {found.__module__}, not in nnunet_sss.training: another "
                f"folder in {VARIABLE} defines it; put {ext_trainer_folder()} first")
    return None


def register(subparsers) -> None:
    parser = subparsers.add_parser("env", help=f"print the {VARIABLE} export line (eval \"$(nnunet-sss env)\")",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help=f"exit non-zero, saying why, unless nnU-Net finds {PROBE_TRAINER} through {VARIABLE} "
                             f"and {', '.join(NNUNET_FOLDERS)} name folders")
    parser.set_defaults(func=_run)


def _run(args) -> int:
    if not args.check:
        print(export_line())
        return 0
    problems = [problem() or lookup_problem(), *folder_problems()]
    problems = [p for p in problems if p]
    for message in problems:
        print(f"nnunet-sss env --check: {message}", file=sys.stderr)
    if problems:
        return 1
    print(f"nnunet-sss env --check: ok, {VARIABLE} lists {ext_trainer_folder()}; "
          f"{', '.join(NNUNET_FOLDERS)} name folders", file=sys.stderr)
    return 0
