"""`nnunet-sss` command line: one subcommand per module, each module owns its arguments.

A subcommand module defines `register(subparsers)`, which adds its parser and sets
`func(args) -> int` as the default. Modules are imported only when listed here, so the
command stays cheap to start. A failure the user caused (a UsageError, or a bad argument)
is one line on stderr and exit status 2; anything else is a bug and keeps its traceback.
"""
import argparse
import importlib
import sys
import warnings

from nnunet_sss.checks import UsageError

SUBCOMMAND_MODULES = (
    "nnunet_sss.env",             # env: the nnUNet_extTrainer line to export, and a check
    "nnunet_sss.plans.writer",    # plans: write an nnU-Net plans file that builds RWKV-SSS
    "nnunet_sss.compare.cli",     # compare: RWKV-SSS vs baseline from nnU-Net results folders
    "nnunet_sss.demo",            # demo: the end-to-end main job
    "nnunet_sss.attention",       # attention: a trained model's WKV weights around one voxel
)


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse's parser with its usage errors in one line, like every other user error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="nnunet-sss", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)  # subparsers share the class
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv=None) -> int:
    # torch warns about its own deprecated internals (torch.jit.interface) when nnU-Net imports
    # it: nothing a user of this command can act on, and it would bury the line that matters
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch(\.|$)")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UsageError as error:
        print(f"nnunet-sss {args.command}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nnunet-sss {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
