"""Compare trainers (and their ensembles) from nnU-Net's own results folders: `nnunet-sss compare`.

`run_comparison` reads the summary.json files nnU-Net wrote, checks that every model holds the
same cases, and writes comparison.md, comparison.json and PNG plots (see docs/compare.md).
"""
from .comparison import run_comparison
from .results import ComparisonInputError

__all__ = ["run_comparison", "ComparisonInputError"]
