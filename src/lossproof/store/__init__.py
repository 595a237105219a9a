"""The store boundary (docs/architecture.md): points, the ledger and dead letters, embedded
(SQLite) or PostgreSQL, behind one interface (:class:`Store`, :mod:`lossproof.store.base`): a writer
(:class:`StoreWriter`) and a reader (:class:`StoreReader`) in one.

:func:`open_store` picks the configured one; :class:`StoreAccess` is how the HTTP process reads it
(off the event loop, a handle per thread).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lossproof.lazy import exports

if TYPE_CHECKING:
    from lossproof.store.access import StoreAccess as StoreAccess
    from lossproof.store.base import AgentSummary as AgentSummary
    from lossproof.store.base import Ledger as Ledger
    from lossproof.store.base import Matcher as Matcher
    from lossproof.store.base import ReportWrite as ReportWrite
    from lossproof.store.base import Store as Store
    from lossproof.store.base import StoreError as StoreError
    from lossproof.store.base import StoreReader as StoreReader
    from lossproof.store.base import StoreUnavailable as StoreUnavailable
    from lossproof.store.base import StoreWriter as StoreWriter
    from lossproof.store.base import WriteBatch as WriteBatch
    from lossproof.store.base import WriteResult as WriteResult
    from lossproof.store.factory import open_store as open_store

# The public API, name -> the module that defines it, loaded on first use (lossproof.lazy).
__all__, __getattr__ = exports(
    __name__,
    {
        "AgentSummary": "lossproof.store.base",
        "Ledger": "lossproof.store.base",
        "Matcher": "lossproof.store.base",
        "ReportWrite": "lossproof.store.base",
        "Store": "lossproof.store.base",
        "StoreReader": "lossproof.store.base",
        "StoreWriter": "lossproof.store.base",
        "StoreError": "lossproof.store.base",
        "StoreUnavailable": "lossproof.store.base",
        "WriteBatch": "lossproof.store.base",
        "WriteResult": "lossproof.store.base",
        "StoreAccess": "lossproof.store.access",
        "open_store": "lossproof.store.factory",
    },
)
