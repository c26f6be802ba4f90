"""Where a log (or a witness's replica) keeps its entries, tree and checkpoints.

SQLAlchemy Core over SQLite or PostgreSQL. Tables::

    ledger_entries       index, leaf hash, kind, author, key, the entry's bytes
    ledger_nodes         every perfect subtree hash, id = level << 56 | index
    ledger_checkpoints   size, root, the log's signed note
    ledger_cosignatures  size, witness organization, its signature line
    ledger_alarms        a witness's split-view alarms

The database itself refuses UPDATE and DELETE on the first four (triggers
that abort on SQLite, a trigger function that raises on PostgreSQL), so
the ledger is append-only even for code that bypasses this module. A batch
of entries, their subtrees and the checkpoint that covers them commit in one
transaction.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from airfed.ledger.checkpoint import NoteSignature, SignedCheckpoint
from airfed.ledger.errors import LedgerStoreError
from airfed.ledger.merkle import CompactRange

__all__ = [
    "APPEND_ONLY_TABLES",
    "Alarm",
    "LedgerStore",
    "StoredEntry",
    "node_id",
]

_metadata = sa.MetaData()

# On SQLite an INTEGER primary key is the table's rowid: rows are stored in
# key order with no separate index, so appends and lookups by key are cheap.
_Key = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

entries_table = sa.Table(
    "ledger_entries",
    _metadata,
    sa.Column("idx", _Key, primary_key=True, autoincrement=False),
    sa.Column("leaf_hash", sa.LargeBinary(32), nullable=False, unique=True),
    sa.Column("kind", sa.String(40), nullable=False),
    sa.Column("author", sa.String(256), nullable=False),
    sa.Column("subject_key", sa.String(256), nullable=False, index=True),
    sa.Column("data", sa.LargeBinary, nullable=False),
)
nodes_table = sa.Table(
    "ledger_nodes",
    _metadata,
    sa.Column("id", _Key, primary_key=True, autoincrement=False),
    sa.Column("hash", sa.LargeBinary(32), nullable=False),
)
checkpoints_table = sa.Table(
    "ledger_checkpoints",
    _metadata,
    sa.Column("size", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("root", sa.LargeBinary(32), nullable=False),
    sa.Column("note", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)
cosignatures_table = sa.Table(
    "ledger_cosignatures",
    _metadata,
    sa.Column("size", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("witness", sa.String(256), primary_key=True),
    sa.Column("line", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)
alarms_table = sa.Table(
    "ledger_alarms",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("kind", sa.String(40), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
)

APPEND_ONLY_TABLES = (
    "ledger_entries",
    "ledger_nodes",
    "ledger_checkpoints",
    "ledger_cosignatures",
)

_PG_FUNCTION = """
CREATE OR REPLACE FUNCTION ledger_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger table % is append-only: % refused', TG_TABLE_NAME, TG_OP;
END $$
"""


def _trigger_ddl(dialect: str) -> list[str]:
    if dialect == "postgresql":
        statements = [_PG_FUNCTION]
        for table in APPEND_ONLY_TABLES:
            statements += [
                f"CREATE OR REPLACE TRIGGER {table}_append_only "
                f"BEFORE UPDATE OR DELETE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change()",
                f"CREATE OR REPLACE TRIGGER {table}_no_truncate "
                f"BEFORE TRUNCATE ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change()",
            ]
        return statements
    statements = []
    for table in APPEND_ONLY_TABLES:
        for op in ("UPDATE", "DELETE"):
            statements.append(
                f"CREATE TRIGGER IF NOT EXISTS {table}_no_{op.lower()} "
                f"BEFORE {op} ON {table} BEGIN "
                f"SELECT RAISE(ABORT, 'ledger table {table} is append-only: "
                f"{op} refused'); END"
            )
    return statements


def node_id(level: int, index: int) -> int:
    """The row id of the perfect subtree ``(level, index)``."""
    return (level << 56) | index


@dataclass(frozen=True)
class StoredEntry:
    index: int
    leaf_hash: bytes
    kind: str
    author: str
    key: str
    data: bytes


@dataclass(frozen=True)
class Alarm:
    time: dt.datetime
    kind: str
    message: str


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=10000")
    # 64 MiB of page cache: the leaf-hash index and the tree's upper levels
    # stay in memory, so proofs and large appends rarely go to the file.
    cursor.execute("PRAGMA cache_size=-65536")
    cursor.close()


def _engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = sa.create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}
        )
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return sa.create_engine(url, pool_pre_ping=True, pool_size=8, max_overflow=8)


class LedgerStore:
    """The ledger's tables in one database; a ``NodeReader`` for proofs."""

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            self.engine = _engine(url)
            with self.engine.begin() as conn:
                _metadata.create_all(conn)
                for statement in _trigger_ddl(self.engine.dialect.name):
                    conn.execute(sa.text(statement))
        except sa.exc.SQLAlchemyError as exc:
            raise LedgerStoreError(f"cannot open the ledger database: {exc}") from exc

    def close(self) -> None:
        self.engine.dispose()

    # ----------------------------------------------------------------- reads

    def _read(self) -> Any:
        try:
            return self.engine.connect()
        except sa.exc.SQLAlchemyError as exc:
            raise LedgerStoreError(f"ledger database unreachable: {exc}") from exc

    def size(self) -> int:
        with self._read() as conn:
            top = conn.execute(sa.select(sa.func.max(entries_table.c.idx))).scalar()
        return 0 if top is None else int(top) + 1

    def node_hashes(self, nodes: Sequence[tuple[int, int]]) -> list[bytes]:
        ids = [node_id(level, index) for level, index in nodes]
        found: dict[int, bytes] = {}
        with self._read() as conn:
            for start in range(0, len(ids), 500):
                found.update(_node_rows(conn, ids[start : start + 500]))
        missing = [n for n, i in zip(nodes, ids, strict=True) if i not in found]
        if missing:
            raise LedgerStoreError(f"the ledger's tree lacks the nodes {missing[:3]}")
        return [found[i] for i in ids]

    def compact_range(self) -> CompactRange:
        """The right edge of the stored tree, to keep appending to it."""
        size = self.size()
        nodes = CompactRange.nodes_for(size)
        return CompactRange(size, self.node_hashes(nodes) if nodes else [])

    def entries(self, start: int, end: int) -> list[StoredEntry]:
        query = (
            sa.select(entries_table)
            .where(entries_table.c.idx >= start, entries_table.c.idx < end)
            .order_by(entries_table.c.idx)
        )
        with self._read() as conn:
            return [_stored(row) for row in conn.execute(query)]

    def entry_datas(self, start: int, end: int) -> list[tuple[int, bytes]]:
        """The index and bytes of entries [start, end), in index order."""
        with self._read() as conn:
            if conn.dialect.name == "sqlite":
                cursor = conn.connection.dbapi_connection.cursor()
                try:
                    cursor.execute(
                        "SELECT idx, data FROM ledger_entries "
                        "WHERE idx >= ? AND idx < ? ORDER BY idx",
                        (start, end),
                    )
                    return list(cursor.fetchall())
                finally:
                    cursor.close()
            query = (
                sa.select(entries_table.c.idx, entries_table.c.data)
                .where(entries_table.c.idx >= start, entries_table.c.idx < end)
                .order_by(entries_table.c.idx)
            )
            return [(int(i), bytes(d)) for i, d in conn.execute(query)]

    def iter_entries(self, start: int = 0, page: int = 20000) -> Iterator[StoredEntry]:
        """Every entry from ``start`` in index order, read page by page."""
        while True:
            batch = self.entries(start, start + page)
            yield from batch
            if len(batch) < page:
                return
            start += page

    def entries_by_key(self, key: str, limit: int = 100) -> list[StoredEntry]:
        query = (
            sa.select(entries_table)
            .where(entries_table.c.subject_key == key)
            .order_by(entries_table.c.idx)
            .limit(limit)
        )
        with self._read() as conn:
            return [_stored(row) for row in conn.execute(query)]

    def latest_entries(self, count: int) -> list[StoredEntry]:
        query = sa.select(entries_table).order_by(entries_table.c.idx.desc())
        with self._read() as conn:
            rows = [_stored(row) for row in conn.execute(query.limit(count))]
        return rows[::-1]

    def indices_of(self, leaf_hashes: Sequence[bytes]) -> dict[bytes, int]:
        """The index of each leaf hash that the log holds."""
        found: dict[bytes, int] = {}
        with self._read() as conn:
            for start in range(0, len(leaf_hashes), 500):
                query = sa.select(entries_table.c.leaf_hash, entries_table.c.idx).where(
                    entries_table.c.leaf_hash.in_(leaf_hashes[start : start + 500])
                )
                found.update((bytes(h), int(i)) for h, i in conn.execute(query))
        return found

    def index_of(self, leaf_hash: bytes) -> int | None:
        query = sa.select(entries_table.c.idx).where(
            entries_table.c.leaf_hash == leaf_hash
        )
        with self._read() as conn:
            found = conn.execute(query).scalar()
        return None if found is None else int(found)

    def checkpoint(self, size: int | None = None) -> SignedCheckpoint | None:
        """The checkpoint at ``size`` (default: the latest), with cosignatures."""
        query = sa.select(checkpoints_table.c.note, checkpoints_table.c.size)
        if size is None:
            query = query.order_by(checkpoints_table.c.size.desc()).limit(1)
        else:
            query = query.where(checkpoints_table.c.size == size)
        with self._read() as conn:
            row = conn.execute(query).first()
            if row is None:
                return None
            lines = conn.execute(
                sa.select(cosignatures_table.c.line)
                .where(cosignatures_table.c.size == row.size)
                .order_by(cosignatures_table.c.witness)
            ).scalars()
            cosignatures = [NoteSignature.parse_line(line) for line in lines]
        return SignedCheckpoint.parse(row.note).with_signatures(*cosignatures)

    def checkpoint_sizes(self) -> list[int]:
        query = sa.select(checkpoints_table.c.size).order_by(checkpoints_table.c.size)
        with self._read() as conn:
            return [int(s) for s in conn.execute(query).scalars()]

    def cosigned_sizes(self, witness: str) -> list[int]:
        query = (
            sa.select(cosignatures_table.c.size)
            .where(cosignatures_table.c.witness == witness)
            .order_by(cosignatures_table.c.size)
        )
        with self._read() as conn:
            return [int(s) for s in conn.execute(query).scalars()]

    def cosignature_line(self, size: int, witness: str) -> str | None:
        query = sa.select(cosignatures_table.c.line).where(
            cosignatures_table.c.size == size, cosignatures_table.c.witness == witness
        )
        with self._read() as conn:
            line = conn.execute(query).scalar()
        return None if line is None else str(line)

    def latest_final_size(self, quorum: int) -> int | None:
        """The largest checkpoint size that ``quorum`` witnesses cosigned."""
        query = (
            sa.select(cosignatures_table.c.size)
            .group_by(cosignatures_table.c.size)
            .having(sa.func.count() >= quorum)
            .order_by(cosignatures_table.c.size.desc())
            .limit(1)
        )
        with self._read() as conn:
            found = conn.execute(query).scalar()
        return None if found is None else int(found)

    def alarms(self) -> list[Alarm]:
        query = sa.select(alarms_table).order_by(alarms_table.c.id)
        with self._read() as conn:
            return [Alarm(r.created_at, r.kind, r.message) for r in conn.execute(query)]

    # ---------------------------------------------------------------- writes

    def append(
        self,
        entries: Sequence[StoredEntry],
        nodes: Sequence[tuple[int, int, bytes]],
        checkpoint: SignedCheckpoint | None,
    ) -> None:
        """Store a batch, its new subtrees and its checkpoint in one transaction."""
        try:
            with self.engine.begin() as conn:
                self._insert_batch(conn, entries, nodes)
                if checkpoint is not None:
                    self._insert_checkpoint(conn, checkpoint)
        except sa.exc.SQLAlchemyError as exc:
            raise LedgerStoreError(
                f"the ledger could not store a batch: {exc}"
            ) from exc

    def append_rows(
        self,
        entry_rows: Sequence[tuple[int, bytes, str, str, str, bytes]],
        node_rows: Sequence[tuple[int, bytes]],
    ) -> None:
        """Store entries and subtrees given as table rows, in one transaction.

        ``entry_rows`` are (index, leaf hash, kind, author, key, bytes) and
        ``node_rows`` are (``node_id(level, index)``, hash): what a replica
        catching up on many entries writes without building objects per row.
        """
        try:
            with self.engine.begin() as conn:
                _bulk_insert(conn, entries_table, _ENTRY_COLUMNS, entry_rows)
                _bulk_insert(conn, nodes_table, ("id", "hash"), node_rows)
        except sa.exc.SQLAlchemyError as exc:
            raise LedgerStoreError(
                f"the ledger could not store a batch: {exc}"
            ) from exc

    @staticmethod
    def _insert_batch(
        conn: Connection,
        entries: Sequence[StoredEntry],
        nodes: Sequence[tuple[int, int, bytes]],
    ) -> None:
        _bulk_insert(
            conn,
            entries_table,
            _ENTRY_COLUMNS,
            [(e.index, e.leaf_hash, e.kind, e.author, e.key, e.data) for e in entries],
        )
        _bulk_insert(
            conn,
            nodes_table,
            ("id", "hash"),
            [(node_id(level, index), h) for level, index, h in nodes],
        )

    @staticmethod
    def _insert_checkpoint(conn: Connection, checkpoint: SignedCheckpoint) -> None:
        log_only = SignedCheckpoint(checkpoint.checkpoint, checkpoint.signatures[:1])
        conn.execute(
            checkpoints_table.insert().values(
                size=checkpoint.checkpoint.size,
                root=checkpoint.checkpoint.root,
                note=log_only.text(),
                created_at=_now(),
            )
        )

    def add_checkpoint(self, checkpoint: SignedCheckpoint) -> None:
        """Store a checkpoint (a replica's copy of the log's) if it is new."""
        if self.checkpoint(checkpoint.checkpoint.size) is not None:
            return
        try:
            with self.engine.begin() as conn:
                self._insert_checkpoint(conn, checkpoint)
        except sa.exc.SQLAlchemyError as exc:
            raise LedgerStoreError(f"cannot store checkpoint: {exc}") from exc

    def add_cosignature(self, size: int, witness: str, line: str) -> bool:
        """Store a witness's cosignature line; False if it had one already."""
        exists = sa.select(cosignatures_table.c.size).where(
            cosignatures_table.c.size == size, cosignatures_table.c.witness == witness
        )
        try:
            with self.engine.begin() as conn:
                if conn.execute(exists).first() is not None:
                    return False
                conn.execute(
                    cosignatures_table.insert().values(
                        size=size, witness=witness, line=line, created_at=_now()
                    )
                )
        except sa.exc.SQLAlchemyError as exc:
            raise LedgerStoreError(f"cannot store cosignature: {exc}") from exc
        return True

    def record_alarm(self, kind: str, message: str) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    alarms_table.insert().values(
                        created_at=_now(), kind=kind, message=message
                    )
                )
        except sa.exc.SQLAlchemyError as exc:
            raise LedgerStoreError(f"cannot record alarm: {exc}") from exc


_ENTRY_COLUMNS = ("idx", "leaf_hash", "kind", "author", "subject_key", "data")


def _bulk_insert(
    conn: Connection,
    table: sa.Table,
    columns: tuple[str, ...],
    rows: Sequence[tuple[Any, ...]],
) -> None:
    """Insert many rows; on SQLite straight through the driver's executemany."""
    if not rows:
        return
    if conn.dialect.name == "sqlite":
        marks = ", ".join("?" for _ in columns)
        # Table and column names are this module's constants, never input.
        names = ", ".join(columns)
        statement = f"INSERT INTO {table.name} ({names}) VALUES ({marks})"  # noqa: S608
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.executemany(statement, rows)
        finally:
            cursor.close()
        return
    conn.execute(table.insert(), [dict(zip(columns, row, strict=True)) for row in rows])


def _node_rows(conn: Connection, ids: list[int]) -> list[tuple[int, bytes]]:
    """The (id, hash) rows of the nodes ``ids``; on SQLite through the driver.

    A proof reads a few dozen nodes: the driver's cursor keeps that well
    under a millisecond, where building a statement would take most of it.
    """
    if conn.dialect.name == "sqlite":
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            marks = ", ".join("?" * len(ids))
            # Only placeholders are formatted in; the ids are bound.
            cursor.execute(
                f"SELECT id, hash FROM ledger_nodes WHERE id IN ({marks})",  # noqa: S608
                ids,
            )
            return list(cursor.fetchall())
        finally:
            cursor.close()
    query = sa.select(nodes_table.c.id, nodes_table.c.hash).where(
        nodes_table.c.id.in_(ids)
    )
    return [(int(i), bytes(h)) for i, h in conn.execute(query)]


def _stored(row: Any) -> StoredEntry:
    return StoredEntry(
        index=int(row.idx),
        leaf_hash=bytes(row.leaf_hash),
        kind=row.kind,
        author=row.author,
        key=row.subject_key,
        data=bytes(row.data),
    )
