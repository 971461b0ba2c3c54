"""Leaderboards, the live sweep view and ablation reports, all read from an experiment's Parquet results.

Import from the modules: ``report.leaderboard`` (the leaderboard frame and its renderings),
``report.live`` (the sweep's live view), ``report.ablation`` (``write_report``). The commands that print
them are in ``mdf_search.cli.results``.
"""
