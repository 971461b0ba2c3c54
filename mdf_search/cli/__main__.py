"""``python -m mdf_search.cli``: the same as the ``mdf-search`` console script."""

from mdf_search.cli import main

main()
