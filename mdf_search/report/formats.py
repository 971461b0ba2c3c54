"""The leaderboard's output formats: a module with no imports, so the command line can offer them as
choices without loading polars and scipy (``report.leaderboard`` renders them)."""

FORMATS = ("table", "csv", "json", "markdown")
