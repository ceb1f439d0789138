"""The bottom layer: SQL tables, the engine factory and the decision-log writer.

Every layer may import `store`; `store` imports nothing of ours, so no package reaches up into
`gateway/` for a table. Alembic migrations (migrations/) describe how the tables came to be.
Other packages import these names from `store`, not from its modules. Importing any part of
`store` runs this file, which imports every table module, so `Base.metadata` always holds the
whole schema (Alembic and the ORM compare one schema)."""

from store.api_schema import BatchItem, BatchRow, FileChunk, RequestLog, StoredFile, StoredResponse
from store.database import make_engine, ping
from store.decision_log import DecisionLog, is_connection_error
from store.decision_row import DecisionRow
from store.finetune_schema import (
    FineTunedAdapter,
    FineTuningCheckpoint,
    FineTuningEvent,
    FineTuningJob,
    FineTuningUsage,
)
from store.schema import (
    ApiKey,
    BanditState,
    Base,
    Budget,
    CacheEntry,
    Decision,
    Feedback,
    PolicyRow,
    Team,
)
from store.storable import REPLACEMENT, clean_text, storable_decision
from store.wal import DecisionWal

__all__ = [
    "REPLACEMENT",
    "ApiKey",
    "BanditState",
    "Base",
    "BatchItem",
    "BatchRow",
    "Budget",
    "CacheEntry",
    "Decision",
    "DecisionLog",
    "DecisionRow",
    "DecisionWal",
    "Feedback",
    "FileChunk",
    "FineTunedAdapter",
    "FineTuningCheckpoint",
    "FineTuningEvent",
    "FineTuningJob",
    "FineTuningUsage",
    "PolicyRow",
    "RequestLog",
    "StoredFile",
    "StoredResponse",
    "Team",
    "clean_text",
    "is_connection_error",
    "make_engine",
    "ping",
    "storable_decision",
]
