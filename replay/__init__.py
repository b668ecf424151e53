"""The operator layer: rebuild, time travel, verify, anchors, export and import, the CLI.

from replay import verify
report = await verify("sqlite:///bot.db")
"""

from replay.anchor import Anchor
from replay.rebuild import rebuild
from replay.trail import ExportFilter, export, parse_line, read_export
from replay.travel import Cut, travel
from replay.verify import Problem, Report, verify, verify_records

__all__ = [
    "Anchor",
    "Cut",
    "ExportFilter",
    "Problem",
    "Report",
    "export",
    "parse_line",
    "read_export",
    "rebuild",
    "travel",
    "verify",
    "verify_records",
]
