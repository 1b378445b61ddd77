"""`nnunet-sss` command line: one subcommand per module, each module owns its arguments.

A subcommand module defines `register(subparsers)`, which adds its parser and sets
`func(args) -> int` as the default. Modules are imported only when listed here, so the
command stays cheap to start.
"""
import argparse
import importlib
import sys

SUBCOMMAND_MODULES = (
    "nnunet_sss.env",             # env: the nnUNet_extTrainer line to export, and a check
    "nnunet_sss.plans.writer",    # plans: write an nnU-Net plans file that builds RWKV-SSS
    "nnunet_sss.compare.cli",     # compare: RWKV-SSS vs baseline from nnU-Net results folders
    "nnunet_sss.demo",            # demo: the end-to-end main job
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nnunet-sss", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
