"""Fundus data: sources → manifest (Parquet) → split (grouped by case) → preprocessed cache → batches.

Modules: ``schema`` (manifest schema, LabelSpace, DataError), ``sources`` (FIVES, HRF, StoneRounds,
generic readers and ``prepare``), ``synthetic`` + ``render`` (synthetic fundus study), ``splits``,
``cache``, ``batches`` (torch Dataset and collate; imports torch), ``study`` (``data synth`` into a
user's folder).
Only the torch-free basics are re-exported here so that importing the package stays cheap.
"""

from mdf_search.data.schema import DataError, LabelSpace, Skipped, read_manifest, write_manifest

__all__ = ["DataError", "LabelSpace", "Skipped", "read_manifest", "write_manifest"]
