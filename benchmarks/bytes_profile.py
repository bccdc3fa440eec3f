"""Where the bytes of the frameworks benchmark's kern-events case go: per table and per event type.

Runs the ``kern`` peer (``benchmarks.peers.kern``) in process on a fresh SQLite file or PostgreSQL
database at N runs and prints what ``benchmarks.frameworks`` counts (every table's rows over the runs
stored) broken down by table, by event type (rows and payload bytes) and by snapshot name. A
diagnostic, not a benchmark subject: ``python -m benchmarks.bytes_profile --runs 1000 --backend sqlite``.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3

import asyncpg

from benchmarks.frameworks import _stored_bytes, _target
from benchmarks.peers import kern
from benchmarks.peers._workload import agent_runs

_SESSION = "bench-session"


def _sqlite(path: object) -> list[tuple[str, float, float]]:
    lines: list[tuple[str, float, float]] = []
    with sqlite3.connect(str(path)) as db:
        for name, payload in db.execute(
            "SELECT d.name, sum(d.payload) FROM dbstat AS d JOIN sqlite_master AS m ON m.name = d.name "
            "WHERE m.type = 'table' GROUP BY d.name ORDER BY 2 DESC"
        ):
            lines.append((f"table {name}", payload, 0))
        events = next(name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE name LIKE '%events'"))
        for kind, rows, data, chain in db.execute(
            f"SELECT type, count(*), sum(length(data)), sum(length(chain)) FROM {events} GROUP BY type ORDER BY 3 DESC"
        ):
            lines.append((f"  events {kind}: data", data, rows))
            lines.append((f"  events {kind}: chain", chain or 0, rows))
        snaps = next(name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE name LIKE '%snapshots'"))
        for name, rows, data in db.execute(f"SELECT name, count(*), sum(length(data)) FROM {snaps} GROUP BY name"):
            lines.append((f"  snapshot {name}", data, rows))
    return lines


async def _postgres(url: str) -> list[tuple[str, float, float]]:
    lines: list[tuple[str, float, float]] = []
    db = await asyncpg.connect(url)
    try:
        for (table,) in await db.fetch(
            "SELECT quote_ident(tablename) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
        ):
            size = await db.fetchval(f"SELECT coalesce(sum(pg_column_size(t.*)), 0) FROM {table} AS t")
            lines.append((f"table {table}", size, 0))
            if table.endswith("events"):
                for kind, rows, row, data in await db.fetch(
                    f"SELECT type, count(*), sum(pg_column_size(t.*)), sum(pg_column_size(data)) "
                    f"FROM {table} AS t GROUP BY type ORDER BY 3 DESC"
                ):
                    lines.append((f"  events {kind}: row", row, rows))
                    lines.append((f"  events {kind}: data", data, rows))
            if table.endswith("snapshots"):
                for name, rows, row in await db.fetch(
                    f"SELECT name, count(*), sum(pg_column_size(t.*)) FROM {table} AS t GROUP BY name"
                ):
                    lines.append((f"  snapshot {name}", row, rows))
    finally:
        await db.close()
    return lines


async def _main(args: argparse.Namespace) -> None:
    async with _target(args.backend, args.url) as target, kern.open_store(target, _SESSION) as store:
        await store.prefill(agent_runs(1, args.runs))
        stored = await _stored_bytes(target)
        lines = _sqlite(target.sqlite_path) if target.sqlite_path else await _postgres(target.postgres_url or "")
    print(
        f"{args.backend}, N = {args.runs}: stored/run {stored.rows / args.runs:,.0f} B "
        f"(+indexes {(stored.rows + stored.indexes) / args.runs:,.0f})"
    )
    for what, size, rows in lines:
        per_row = f"  ({size / rows:,.0f} B/row, {rows / args.runs:.2f} rows/run)" if rows else ""
        print(f"  {what:45} {size / args.runs:9,.1f} B/run{per_row}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
