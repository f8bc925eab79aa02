"""Ordered schema migrations of the store; each runs once and is recorded in schema_migrations.

Never edit a released migration: append a new one. Primary keys are left off the big tables on
purpose: DuckDB builds an ART index for each, which slows bulk inserts of millions of rows; the
store allocates keys itself inside its write transaction.
"""

from __future__ import annotations

MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (1, "datasets, versions, rows, drop reasons", [
        """CREATE TABLE datasets (dataset_id INTEGER PRIMARY KEY, name VARCHAR UNIQUE NOT NULL,
            description VARCHAR DEFAULT '', active_version INTEGER,
            created_at TIMESTAMP DEFAULT current_timestamp)""",
        """CREATE TABLE versions (version_id INTEGER PRIMARY KEY, dataset_id INTEGER NOT NULL,
            parent_id INTEGER, operation VARCHAR NOT NULL, params VARCHAR, counts VARCHAR,
            n_rows BIGINT, message VARCHAR DEFAULT '',
            created_at TIMESTAMP DEFAULT current_timestamp)""",
        """CREATE TABLE rows (row_key BIGINT NOT NULL, origin_key BIGINT NOT NULL,
            id VARCHAR NOT NULL, messages VARCHAR NOT NULL, metadata VARCHAR NOT NULL,
            tags VARCHAR[], note VARCHAR, n_turns INTEGER, n_chars BIGINT,
            response_chars BIGINT, source_line BIGINT)""",
        "CREATE TABLE version_rows (version_id INTEGER NOT NULL, pos BIGINT NOT NULL, "
        "row_key BIGINT NOT NULL)",
        """CREATE TABLE dropped (version_id INTEGER NOT NULL, row_key BIGINT NOT NULL,
            reason VARCHAR NOT NULL, duplicate_of BIGINT, detail VARCHAR)""",
        """CREATE TABLE changed (version_id INTEGER NOT NULL, new_row_key BIGINT NOT NULL,
            old_row_key BIGINT NOT NULL, reason VARCHAR NOT NULL, detail VARCHAR)""",
        """CREATE TABLE import_rejects (version_id INTEGER NOT NULL, file VARCHAR, line BIGINT,
            field VARCHAR, reason VARCHAR, fix VARCHAR, raw VARCHAR)""",
    ]),
    (2, "caches of scores and embeddings by content id", [
        """CREATE TABLE scores (id VARCHAR NOT NULL, scorer VARCHAR NOT NULL,
            params_hash VARCHAR NOT NULL, value DOUBLE, detail VARCHAR,
            created_at TIMESTAMP DEFAULT current_timestamp)""",
        """CREATE TABLE embeddings (id VARCHAR NOT NULL, model VARCHAR NOT NULL,
            field VARCHAR NOT NULL, vector FLOAT[] NOT NULL)""",
    ]),
    (3, "labels by content id with an undoable action log; rows flagged for review", [
        # A label event belongs to one action (one click, one bulk label, one file); the
        # current label of a row is its newest event of an action that was not undone, so
        # undoing a bulk action brings back whatever each row had before.
        """CREATE TABLE label_actions (action_id INTEGER PRIMARY KEY, label_set VARCHAR NOT NULL,
            kind VARCHAR NOT NULL, description VARCHAR, n_rows INTEGER,
            created_at TIMESTAMP DEFAULT current_timestamp, undone_at TIMESTAMP)""",
        """CREATE TABLE label_events (action_id INTEGER NOT NULL, id VARCHAR NOT NULL,
            label_set VARCHAR NOT NULL, label VARCHAR, reason VARCHAR)""",
        """CREATE TABLE flagged (version_id INTEGER NOT NULL, row_key BIGINT NOT NULL,
            reason VARCHAR NOT NULL, detail VARCHAR)""",
    ]),
    (4, "ids are never reused; imports are staged until published", [
        # The next version id and row key to hand out. A deleted dataset's ids stay used, so
        # a run folder that recorded v2 can never point at other data.
        "CREATE TABLE id_counters (name VARCHAR PRIMARY KEY, next_id BIGINT NOT NULL)",
        "INSERT INTO id_counters SELECT 'version', coalesce(max(version_id), 0) + 1 FROM versions",
        "INSERT INTO id_counters SELECT 'row', coalesce(max(row_key), 0) + 1 FROM rows",
        # A big import commits its rows in chunks under a version id that has no `versions`
        # row yet, so nobody sees it; this records which process owns it, so the leftovers of
        # a killed import can be removed.
        """CREATE TABLE staged_versions (version_id INTEGER PRIMARY KEY, dataset VARCHAR NOT NULL,
            pid INTEGER, host VARCHAR, started_at TIMESTAMP DEFAULT current_timestamp)""",
    ]),
    (5, "a registry of runs; datasets carry a role (train, eval, pool)", [
        # One row per run folder (training, evaluation, imported predictions, loop, scoring,
        # embedding, labelling). The run folder keeps the bulky outputs and stays the truth
        # for a run in progress; the registry is what pages and the CLI list and query.
        """CREATE TABLE runs (run_id VARCHAR PRIMARY KEY, kind VARCHAR NOT NULL,
            task VARCHAR, state VARCHAR NOT NULL, parent_run VARCHAR, version_id INTEGER,
            output_version_id INTEGER, model VARCHAR, name VARCHAR, config VARCHAR,
            device VARCHAR, created_at TIMESTAMP, started_at TIMESTAMP,
            finished_at TIMESTAMP, summary VARCHAR, error VARCHAR)""",
        "ALTER TABLE datasets ADD COLUMN role VARCHAR DEFAULT ''",
    ]),
    (6, "one name@N per version (a view); the registry keeps what it last saw of a run folder", [
        # The one definition of how people name a version: its dataset and its place there.
        """CREATE VIEW version_refs AS SELECT v.version_id, v.dataset_id, d.name AS dataset,
            row_number() OVER (PARTITION BY v.dataset_id ORDER BY v.version_id) AS number,
            d.name || '@' || row_number() OVER (PARTITION BY v.dataset_id
                                                ORDER BY v.version_id) AS ref
            FROM versions v JOIN datasets d USING (dataset_id)""",
        # The signature (file sizes and times, worker liveness) of a run folder at its last
        # read: runs.sync reads a folder again only when it differs.
        "ALTER TABLE runs ADD COLUMN seen VARCHAR",
    ]),
]
