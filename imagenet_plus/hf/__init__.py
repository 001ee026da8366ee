"""Hugging Face ``datasets`` interop: the Parquet export of a store and the replay transform.

``export.py`` writes a store as Parquet that ``datasets.load_dataset`` reads with typed features;
``transform.py`` turns its rows into training items through the package's replay core, reading them
through ``rows.py``, the rows' records source.
"""

from __future__ import annotations

from .export import (check_parquet, export_parquet, has_parquet, images_forbidden, parquet_features, parquet_filename,
                     row_checksum, verify_parquet)
from .transform import ReplayTransform, create_transform

__all__ = ["export_parquet", "check_parquet", "verify_parquet", "has_parquet", "row_checksum", "parquet_features",
           "parquet_filename", "images_forbidden", "create_transform", "ReplayTransform"]
