"""Leaderboards, the live sweep view and ablation reports, all read from an experiment's Parquet results."""

from mdf_search.report.ablation import report_command, write_report
from mdf_search.report.leaderboard import leaderboard_command
from mdf_search.report.live import LiveLeaderboard

__all__ = ["LiveLeaderboard", "leaderboard_command", "report_command", "write_report"]
