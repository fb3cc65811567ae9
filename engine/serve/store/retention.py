"""The prediction log's retention: rows older than it are deleted by the log's writer, a few
thousand per transaction (short, so inserts keep flowing), pausing while SQLite's WAL is over
its limit (a report reading the log keeps SQLite from resetting it: deleting on would grow it
without bound)."""

from __future__ import annotations

import logging
import time

from pneumo_onnx.engine.serve.store.backend import Conn, Database

log = logging.getLogger(__name__)

PRUNE_ROWS = 5000  # rows deleted per transaction


def prune(db: Database, conn: Conn, days: float, name: str) -> bool:
    """Delete the rows older than `days`, and give the space back (SQLite). Pauses (True)
    while SQLite's WAL is over its limit."""
    cutoff = time.time() - days * 86400.0
    deleted = 0
    paused = False
    try:
        while not (paused := db.busy(conn)):
            with conn.transaction():
                n = conn.execute(
                    "DELETE FROM predictions WHERE id IN (SELECT id FROM predictions "
                    "WHERE time < ? ORDER BY time LIMIT ?)",
                    (cutoff, PRUNE_ROWS),
                ).rowcount
            deleted += n
            if n < PRUNE_ROWS:
                break
        if deleted and not paused:
            paused = not db.reclaim(conn)
        if deleted:
            log.info(
                "prediction log: %d rows older than %g days deleted%s",
                deleted,
                days,
                " (paused while reports read the log)" if paused else "",
            )
    except db.errors as e:
        log.error("prediction log %s: retention pass failed (%s)", name, e)
    return paused
