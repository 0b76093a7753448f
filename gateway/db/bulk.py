"""Many rows of one kind in one statement: the dispatcher's batch writes.

SQLite runs an executemany in C against a database in this process. Its statement is compiled
once per table and columns, and the rows go to the driver as they are (tuples for SQLite's
positional parameters; dicts for PostgreSQL through another driver than psycopg), each value
through its column's bind processor (JSON, UTC instants) as SQLAlchemy would bind it:
SQLAlchemy's own executemany builds and processes a parameter dict per row in Python, which
took longer than the executemany itself.

On PostgreSQL (psycopg) an executemany is one Bind/Execute per row (pipelined): per-row Python
in psycopg and per-row statement overhead in the server. A multi-row `VALUES` list is no
better: psycopg parses a statement with thousands of placeholders in Python, and its text is
never the same twice. So the rows go as one array per column, in binary, to a statement whose
text depends only on the columns:

    INSERT INTO t (a, b) SELECT a, b FROM unnest($1::T1[], $2::T2[]) WITH ORDINALITY
        AS bulk_rows(a, b, bulk_row_number) ORDER BY bulk_row_number
    UPDATE t SET b = bulk_rows.b FROM unnest($1::T1[], $2::T2[]) AS bulk_rows(a, b)
        WHERE t.a = bulk_rows.a

(800 timeline rows: 10 ms of client CPU and 16 ms of server CPU, against 28 and 28 as an
executemany; 800 trade saves: 23 and 44 against 38 and 60.) One row goes as SQLite's do, a
statement compiled once with a parameter per column: its arrays cost twice that in Python
(about 100 µs against 200; from two rows on the two forms cost the same), and a proposal
writes five tables a row each. One parameter per column whatever
the number of rows (never near PostgreSQL's 65,535), each value bound as the column's own
type binds it (its SQLAlchemy bind processor: JSON, aware UTC instants) and cast to the
column's type without a length, as SQLAlchemy casts a bind (so a value too long still fails on
assignment, as before). Inserted rows take their serial ids in the order given (the ORDER BY
of an INSERT ... SELECT fixes the order in which PostgreSQL draws them). Column defaults
computed in Python (`default=utcnow`) are filled in here, per row, as SQLAlchemy would; an
UPDATE's `onupdate` likewise.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from functools import lru_cache

from sqlalchemy import Column, Table, bindparam, insert, update
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session
from sqlalchemy.types import String

Row = Mapping[str, object]

CHUNK_ROWS = 5000  # rows a statement: bounds one message's size (a few MB of trade states)
IN_CHUNK = 1000  # ids an IN list carries: well under either database's parameter limit
_ALIAS = "bulk_rows"
_ORDER = "bulk_row_number"


def arrays(session: Session) -> bool:
    """Whether this session's writes go as arrays (PostgreSQL through psycopg)."""
    dialect = session.get_bind().dialect
    return dialect.name == "postgresql" and dialect.driver == "psycopg"


def insert_rows(session: Session, table: Table, rows: Sequence[Row], *,
                ignore_existing: bool = False, upsert_on: tuple[str, ...] = ()) -> None:
    """Insert `rows` (dicts of the same columns) in order. `ignore_existing` skips rows whose
    key is taken (ON CONFLICT DO NOTHING), `upsert_on` names the key whose existing rows take
    the new values (ON CONFLICT (key) DO UPDATE); both databases have both forms."""
    if not rows:
        return
    if not arrays(session) or len(rows) == 1:
        rows = _with_defaults(table, rows, onupdate=False)
        _execute_compiled(session, _compiled_insert(session.get_bind().dialect, table,
                                                    tuple(rows[0]), ignore_existing, upsert_on),
                          rows, {})
        return
    rows = _with_defaults(table, rows, onupdate=False)
    columns = tuple(rows[0])
    dialect = session.get_bind().dialect
    sql = _insert_sql(table, columns, dialect, ignore_existing, upsert_on)
    for start in range(0, len(rows), CHUNK_ROWS):
        _execute(session, sql, table, columns, rows[start:start + CHUNK_ROWS], {})


def update_rows(session: Session, table: Table, rows: Sequence[Row], keys: tuple[str, ...],
                where: Mapping[str, object] | None = None, keep: str = "last") -> None:
    """Set each row's other columns on the table row its `keys` columns name, where the
    `where` columns also hold those values. Rows naming one table row twice: the last wins,
    as it does in an executemany, or the first (`keep="first"`), as it does when `where`
    stops a row matching once the first one has been applied."""
    if not rows:
        return
    where = dict(where or {})
    if not arrays(session) or len(rows) == 1:
        rows = _with_defaults(table, rows, onupdate=True)
        dialect = session.get_bind().dialect
        _execute_compiled(session, _compiled_update(dialect, table, tuple(rows[0]), keys,
                                                    tuple(sorted(where.items()))),
                          rows, {f"b_{k}": k for k in keys})
        return
    rows = _with_defaults(table, _unique(rows, keys, keep), onupdate=True)
    columns = tuple(rows[0])
    dialect = session.get_bind().dialect
    sql = _update_sql(table, columns, keys, tuple(where), dialect)
    for start in range(0, len(rows), CHUNK_ROWS):
        _execute(session, sql, table, columns, rows[start:start + CHUNK_ROWS], where)


# --- SQLite's statements ---------------------------------------------------------------------

# (SQL, positional, the parameters: (its name in the SQL, the row's column or None, the
# statement's own value, the bind processor))
_Param = tuple[str, str | None, object, object]
_Compiled = tuple[str, bool, tuple[_Param, ...]]


def _execute_compiled(session: Session, compiled: _Compiled, rows: Sequence[Row],
                      renamed: Mapping[str, str]) -> None:
    """`compiled`'s SQL run on the driver for every row: each parameter is a row's value
    (under its own name, or the column `renamed` names) or the statement's own constant,
    through its bind processor; as a tuple per row (SQLite's `?`) or a dict (`%(name)s`)."""
    sql, positional, params = compiled
    plan = [(key, renamed.get(name, name) if name is not None else None, constant,
             _once_per_instant(process) if process is not None else None)
            for key, name, constant, process in params]
    values = [[(row[name] if name is not None else constant) if process is None
               else process(row[name] if name is not None else constant)
               for _, name, constant, process in plan] for row in rows]
    keys = [key for key, _, _, _ in plan]
    given = [tuple(v) for v in values] if positional else [dict(zip(keys, v, strict=True))
                                                           for v in values]
    session.connection().exec_driver_sql(sql, given[0] if len(given) == 1 else given)


def _once_per_instant(process):  # noqa: ANN001, ANN202
    """`process` (a bind processor: a pure function of the value) run once per distinct
    instant of one statement's rows: a transaction stamps its rows with one `utcnow()`, and
    binding it (to UTC, then to SQLite's text) per row cost more than the row's SQL."""
    done: dict[datetime, object] = {}

    def once(value):  # noqa: ANN001, ANN202
        if type(value) is not datetime:
            return process(value)
        found = done.get(value, done)
        if found is done:
            found = done[value] = process(value)
        return found
    return once


def _compile(statement, dialect: Dialect, columns: tuple[str, ...]) -> _Compiled:  # noqa: ANN001
    compiled = statement.compile(dialect=dialect, column_keys=list(columns))
    positional = compiled.positiontup is not None
    escaped = compiled.escaped_bind_names or {}
    params = []
    for name in compiled.positiontup if positional else compiled.binds:
        bind = compiled.binds[name]
        given = name in columns
        params.append((escaped.get(name, name), name if given else None,
                       None if given else bind.effective_value,
                       bind.type._cached_bind_processor(dialect)))
    return compiled.string, positional, tuple(params)


@lru_cache(maxsize=64)
def _compiled_insert(dialect: Dialect, table: Table, columns: tuple[str, ...],
                     ignore_existing: bool, upsert_on: tuple[str, ...]) -> _Compiled:
    statement = _conflict_insert(dialect.name, table, columns, ignore_existing, upsert_on) \
        if ignore_existing or upsert_on else insert(table)
    return _compile(statement, dialect, columns)


@lru_cache(maxsize=64)
def _compiled_update(dialect: Dialect, table: Table, columns: tuple[str, ...],
                     keys: tuple[str, ...], where: tuple[tuple[str, object], ...]) -> _Compiled:
    names = tuple(f"b_{c}" if c in keys else c for c in columns)
    return _compile(_update_statement(table, keys, where), dialect, names)


@lru_cache(maxsize=64)
def _update_statement(table: Table, keys: tuple[str, ...],
                      where: tuple[tuple[str, object], ...]):  # noqa: ANN202
    return update(table).where(*[table.c[k] == bindparam(f"b_{k}") for k in keys],
                               *[table.c[c] == v for c, v in where])


@lru_cache(maxsize=64)
def _conflict_insert(dialect: str, table: Table, columns: tuple[str, ...], ignore_existing: bool,
                     upsert_on: tuple[str, ...]):  # noqa: ANN202
    """The executemany INSERT with an ON CONFLICT clause, in the dialect's own form."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert

    statement = dialect_insert(table)
    if ignore_existing:
        return statement.on_conflict_do_nothing()
    return statement.on_conflict_do_update(
        index_elements=list(upsert_on),
        set_={c: statement.excluded[c] for c in columns if c not in upsert_on})


# --- PostgreSQL's ---------------------------------------------------------------------------

def _execute(session: Session, sql: str, table: Table, columns: tuple[str, ...],
             rows: Sequence[Row], where: Mapping[str, object]) -> None:
    dialect = session.get_bind().dialect
    params: dict[str, object] = {}
    for n, name in enumerate(columns):
        process = _processor(table.c[name], dialect)
        process = _once_per_instant(process) if process is not None else None
        values = [row[name] for row in rows]
        params[f"c{n}"] = [process(v) for v in values] if process else values
    for n, (name, value) in enumerate(where.items()):
        process = _processor(table.c[name], dialect)
        params[f"w{n}"] = process(value) if process else value
    session.connection().exec_driver_sql(sql, params)


@lru_cache(maxsize=256)
def _processor(column: Column, dialect: Dialect):  # noqa: ANN202
    return column.type.dialect_impl(dialect).bind_processor(dialect)


def _cast_type(column: Column, dialect: Dialect) -> str:
    """The column's type as SQLAlchemy casts a bind to it: VARCHAR without its length."""
    type_ = column.type
    if type_._type_affinity is String and getattr(type_, "length", None):
        type_ = String()
    return type_.compile(dialect=dialect)


def _unnest(table: Table, columns: tuple[str, ...], dialect: Dialect) -> str:
    return "unnest({})".format(", ".join(
        f"CAST(%(c{n})b AS {_cast_type(table.c[name], dialect)}[])"
        for n, name in enumerate(columns)))


@lru_cache(maxsize=64)
def _insert_sql(table: Table, columns: tuple[str, ...], dialect: Dialect,
                ignore_existing: bool, upsert_on: tuple[str, ...]) -> str:
    quote = dialect.identifier_preparer.quote
    assert _ORDER not in table.c and _ALIAS not in table.c
    names = ", ".join(quote(c) for c in columns)
    sql = (f"INSERT INTO {dialect.identifier_preparer.format_table(table)} ({names}) "
           f"SELECT {names} FROM {_unnest(table, columns, dialect)} WITH ORDINALITY "
           f"AS {_ALIAS}({names}, {_ORDER}) ORDER BY {_ORDER}")
    if ignore_existing:
        sql += " ON CONFLICT DO NOTHING"
    elif upsert_on:
        sets = ", ".join(f"{quote(c)} = EXCLUDED.{quote(c)}"
                         for c in columns if c not in upsert_on)
        sql += f" ON CONFLICT ({', '.join(quote(c) for c in upsert_on)}) DO UPDATE SET {sets}"
    return sql


@lru_cache(maxsize=64)
def _update_sql(table: Table, columns: tuple[str, ...], keys: tuple[str, ...],
                where: tuple[str, ...], dialect: Dialect) -> str:
    quote = dialect.identifier_preparer.quote
    target = dialect.identifier_preparer.format_table(table)
    assert set(keys) <= set(columns) and _ALIAS not in table.c
    sets = ", ".join(f"{quote(c)} = {_ALIAS}.{quote(c)}" for c in columns if c not in keys)
    match = [f"{target}.{quote(k)} = {_ALIAS}.{quote(k)}" for k in keys]
    match += [f"{target}.{quote(c)} = CAST(%(w{n})s AS {_cast_type(table.c[c], dialect)})"
              for n, c in enumerate(where)]
    return (f"UPDATE {target} SET {sets} FROM {_unnest(table, columns, dialect)} "
            f"AS {_ALIAS}({', '.join(quote(c) for c in columns)}) "
            f"WHERE {' AND '.join(match)}")


def _unique(rows: Iterable[Row], keys: tuple[str, ...], keep: str) -> list[Row]:
    """One row per key (an UPDATE ... FROM applies one of several, not each in turn)."""
    if keep not in ("first", "last"):
        raise ValueError(f"keep must be 'first' or 'last', not {keep!r}")
    found: dict[tuple, Row] = {}
    for row in rows:
        key = tuple(row[k] for k in keys)
        if keep == "last" or key not in found:
            found[key] = row
    return list(found.values())


def _with_defaults(table: Table, rows: Sequence[Row], *, onupdate: bool) -> list[Row]:
    """Rows with the Python-side defaults (or `onupdate` values) of the columns they leave
    out, computed per row as SQLAlchemy does for an executemany."""
    given = set(rows[0])
    missing = []
    for column in table.columns:
        default = column.onupdate if onupdate else column.default
        if column.name in given or default is None:
            continue
        if default.is_scalar:
            missing.append((column.name, lambda value=default.arg: value))
        elif default.is_callable:
            missing.append((column.name, lambda fn=default.arg: fn(None)))
        else:
            raise ValueError(f"{table.name}.{column.name}: a default computed in SQL")
    if not missing:
        return list(rows)
    return [{**row, **{name: make() for name, make in missing}} for row in rows]
