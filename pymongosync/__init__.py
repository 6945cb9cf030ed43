"""pymongosync: an open-source reimplementation of MongoDB's mongosync.

The public surface — what ``bench/``, ``scripts/`` and library users import — is listed in
``__all__``; everything else is internal and may change between releases.
"""

from pymongosync.clusters import APP_NAME, Cluster
from pymongosync.errors import (
    InvalidStartRequest,
    MigrationError,
    PymongosyncError,
    ResetError,
)
from pymongosync.migration import Migration
from pymongosync.request import StartRequest
from pymongosync.store import METADATA_DATABASE
from pymongosync.verifier.compare import Comparison, compare_clusters

__all__ = [
    "APP_NAME",
    "METADATA_DATABASE",
    "Cluster",
    "Comparison",
    "InvalidStartRequest",
    "Migration",
    "MigrationError",
    "PymongosyncError",
    "ResetError",
    "StartRequest",
    "compare_clusters",
]
