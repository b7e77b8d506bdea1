"""Wall time per study notebook and preset.

Collects the wall times recorded by earlier runs (``<results>/<notebook>/<preset>/.stamp.json``,
written by ``smoothgen study``, and each experiment's ``meta.json``), and with ``--run PRESET``
first executes the notebooks at that preset (``--only 07`` to restrict; ``smoke`` takes seconds
per notebook, ``cpu`` minutes to hours — not the default).

Usage: ``python benchmarks/notebook_times.py [--run smoke] [--only 02 07]``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import _common
from smoothgen import study
from smoothgen.results import results_root


def recorded(root: Path) -> list[dict[str, Any]]:
    """One row per (notebook, preset) folder holding a stamp or a meta.json."""
    rows = []
    for notebook in study.list_notebooks():
        for folder in sorted((root / notebook.stem).glob("*/")):
            stamp, meta = folder / study.STAMP, folder / "meta.json"
            row: dict[str, Any] = {"notebook": notebook.stem, "preset": folder.name}
            if stamp.exists():
                row["notebook_wall_s"] = json.loads(stamp.read_text()).get("wall_time_s")
            if meta.exists():
                info = json.loads(meta.read_text())
                row["experiment_wall_s"] = info.get("wall_time_s")
                row["machine"] = info.get("machine")
            if len(row) > 2:
                rows.append(row)
    return rows


def totals(rows: list[dict[str, Any]]) -> dict[str, float | int]:
    """``<preset>_total_wall_s`` (sum of the notebooks' recorded wall times, hours in ``..._wall_h``) and
    ``<preset>_notebooks`` (how many have a recorded time), per preset."""
    out: dict[str, float | int] = {}
    for preset in sorted({row["preset"] for row in rows}):
        times = [row["notebook_wall_s"] for row in rows if row["preset"] == preset and row.get("notebook_wall_s")]
        out |= {f"{preset}_total_wall_s": round(sum(times), 1), f"{preset}_total_wall_h": round(sum(times) / 3600, 2),
                f"{preset}_notebooks": len(times)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", choices=["smoke", "cpu", "gpu"], help="execute the notebooks at this preset first")
    parser.add_argument("--only", nargs="+", help="notebook numbers or names")
    args = parser.parse_args()
    if args.run:
        for notebook in study.list_notebooks(args.only):
            stamp = study.run_notebook(notebook, args.run, force=True)
            print(f"{notebook.stem} [{args.run}]: {stamp['wall_time_s']} s", flush=True)
    rows = recorded(results_root())
    _common.print_table(rows, ["notebook", "preset", "notebook_wall_s", "experiment_wall_s"])
    _common.write("notebook_times", {"rows": rows, **totals(rows), "args": vars(args)})


if __name__ == "__main__":
    main()
