"""The ``lightning-al`` command: ``fit / validate / test / predict`` (one run, ``lightning_al.cli``), ``study``
(a grid of runs, ``lightning_al.study``) and ``report`` (tables and figures of runs, ``lightning_al.report``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(args: Sequence[str] | None = None) -> None:
    """Run the command of ``args`` (default: sys.argv); ``lightning-al --help`` lists them."""
    args = list(sys.argv[1:] if args is None else args)
    # Imported per command: `report` reads files only, and loads no Lightning, model or data code.
    if args[:1] == ["report"]:
        from lightning_al.report.command import main as report

        report(args[1:])
        return
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from lightning_al.cli import main as run
    from lightning_al.study import main as study

    try:
        if args[:1] == ["study"]:
            study(args[1:])
        else:
            run(args)
    except SIGTERMException as stopped:
        # A run stopped by a signal is not finished: never exit 0 (a scheduler would not requeue it).
        raise SystemExit(stopped.code or 143) from None
