"""The SupRsync database module: contract schema, socs's queries, idempotency, bad input."""

import os
import sqlite3
import threading

import pytest
import sqlalchemy

from socs_agents.db import BadFileEntry, SupRsyncDB, make_entry, md5_file, timecode_of
from socs_agents.db.entries import md5_small_file

# (name, type, notnull, pk) column by column, as socs's SupRsync models create them.
CONTRACT = {
    "supersync_v0": [
        ("id", "INTEGER", 1, 1),
        ("local_path", "VARCHAR", 1, 0),
        ("local_md5sum", "VARCHAR", 1, 0),
        ("archive_name", "VARCHAR", 1, 0),
        ("remote_path", "VARCHAR", 1, 0),
        ("timestamp", "FLOAT", 1, 0),
        ("remote_md5sum", "VARCHAR", 0, 0),
        ("copied", "FLOAT", 0, 0),
        ("removed", "FLOAT", 0, 0),
        ("failed_copy_attempts", "INTEGER", 0, 0),
        ("deletable", "BOOLEAN", 0, 0),
        ("ignore", "BOOLEAN", 0, 0),
    ],
    "timecode_dirs_v0": [
        ("id", "INTEGER", 1, 1),
        ("timecode", "INTEGER", 1, 0),
        ("archive_name", "VARCHAR", 1, 0),
        ("completed", "BOOLEAN", 0, 0),
        ("synced", "BOOLEAN", 0, 0),
        ("finalized", "BOOLEAN", 0, 0),
        ("finalize_file_id", "INTEGER", 0, 0),
    ],
}


@pytest.fixture
def db(tmp_path):
    d = SupRsyncDB(str(tmp_path / "db" / "suprsync.db"))
    yield d
    d.close()


def make_files(root, n, timecode="17000", size=64):
    paths = []
    for i in range(n):
        p = root / timecode / f"file_{i}.dat"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(size))
        paths.append(p)
    return paths


def entry_for(path, archive="smurf", timecode="17000"):
    return make_entry(str(path), f"{timecode}/crate1/{path.name}", archive)


def test_schema_matches_contract_column_by_column(db):
    con = sqlite3.connect(db.db_path)
    for table, columns in CONTRACT.items():
        info = con.execute(f"PRAGMA table_info({table})").fetchall()
        got = [(name, typ, notnull, pk) for _, name, typ, notnull, _dflt, pk in info]
        assert got == columns
    fks = con.execute("PRAGMA foreign_key_list(timecode_dirs_v0)").fetchall()
    assert [(f[2], f[3], f[4]) for f in fks] == [("supersync_v0", "finalize_file_id", "id")]
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_rows_read_back_with_socs_suprsync_sql(db, tmp_path):
    paths = make_files(tmp_path / "data", 3)
    db.add_files([entry_for(p) for p in paths])
    con = sqlite3.connect(db.db_path)
    # SupRsyncFilesManager.get_copyable_files, as SQLAlchemy renders it for socs
    copyable = con.execute(
        "SELECT supersync_v0.local_path, supersync_v0.local_md5sum, supersync_v0.remote_md5sum "
        "FROM supersync_v0 WHERE supersync_v0.removed IS NULL AND "
        "supersync_v0.archive_name = ? AND supersync_v0.failed_copy_attempts < ? AND "
        "supersync_v0.ignore = 0",
        ("smurf", 5),
    ).fetchall()
    assert sorted(r[0] for r in copyable) == sorted(str(p) for p in paths)
    assert all(r[1] != r[2] for r in copyable)
    assert all(r[1] == md5_file(r[0]) and r[1] == r[1].lower() for r in copyable)
    # get_archive_stats reads every row of the archive in timestamp order
    stats_rows = con.execute(
        "SELECT local_path, timestamp, deletable, ignore FROM supersync_v0 "
        "WHERE archive_name = ? ORDER BY timestamp ASC",
        ("smurf",),
    ).fetchall()
    assert len(stats_rows) == 3 and all(isinstance(r[1], float) for r in stats_rows)
    # _update_tcdir: timecode dirs of the archive, files by remote-path prefix
    tcdirs = con.execute(
        "SELECT timecode, completed, synced, finalized, finalize_file_id "
        "FROM timecode_dirs_v0 WHERE archive_name = ?",
        ("smurf",),
    ).fetchall()
    assert tcdirs == [(17000, 0, 0, 0, None)]
    in_dir = con.execute(
        "SELECT count(*) FROM supersync_v0 WHERE remote_path LIKE ?", ("17000/%",)
    ).fetchone()[0]
    assert in_dir == 3
    stats = db.archive_stats("smurf")
    assert stats["num_files"] == 3 and stats["uncopied_files"] == 3
    assert stats["finalized_until"] == min(r[1] for r in stats_rows) - 1


def test_socs_written_rows_are_read_by_us(db):
    # A row as socs's create_file leaves it (defaults applied by its ORM).
    con = sqlite3.connect(db.db_path)
    con.execute(
        "INSERT INTO supersync_v0 (local_path, local_md5sum, archive_name, remote_path,"
        " timestamp, failed_copy_attempts, deletable, ignore) VALUES "
        "('/data/x', 'abc', 'timestreams', '17001/s/x', 1.7e9, 0, 1, 0)"
    )
    con.commit()
    rows = db.files("timestreams")
    assert rows[0]["local_path"] == "/data/x" and rows[0]["deletable"] is True
    assert db.archives() == {"timestreams": 1}


def test_explicit_defaults_are_stored(db, tmp_path):
    (p,) = make_files(tmp_path / "d", 1)
    db.add_files([entry_for(p)])
    row = (
        sqlite3.connect(db.db_path)
        .execute(
            "SELECT failed_copy_attempts, deletable, ignore, copied, removed FROM supersync_v0"
        )
        .fetchone()
    )
    assert row == (0, 1, 0, None, None)


def test_same_file_twice_is_one_row_and_changed_content_is_new(db, tmp_path):
    (p,) = make_files(tmp_path / "d", 1)
    first = db.add_files([entry_for(p), entry_for(p)])
    assert len(first.inserted) == 1 and len(first.duplicates) == 1
    again = db.add_files([entry_for(p)])
    assert again.inserted == [] and len(again.duplicates) == 1
    p.write_bytes(b"new content")
    changed = db.add_files([entry_for(p)])
    assert len(changed.inserted) == 1
    assert db.count("smurf") == 2
    # Same file in another archive is another row.
    assert len(db.add_files([entry_for(p, archive="timestreams")]).inserted) == 1


def test_one_timecode_row_per_code_and_archive(db, tmp_path):
    a = make_files(tmp_path / "a", 2, timecode="17000")
    b = make_files(tmp_path / "b", 2, timecode="17001")
    r1 = db.add_files([entry_for(p, timecode="17000") for p in a])
    r2 = db.add_files(
        [entry_for(p, timecode="17001") for p in b]
        + [make_entry(str(a[0]), "17000/x/other", "timestreams")]
    )
    assert r1.new_timecodes == [(17000, "smurf")]
    assert sorted(r2.new_timecodes) == [(17000, "timestreams"), (17001, "smurf")]
    tcs = [(t["timecode"], t["archive_name"]) for t in db.timecode_dirs()]
    assert sorted(tcs) == [(17000, "smurf"), (17000, "timestreams"), (17001, "smurf")]


@pytest.mark.parametrize(
    "remote,code",
    [
        ("17000/a", 17000),
        ("1700/a", None),
        ("01700/a", None),
        ("abcde/a", None),
        ("170000/a", None),
        ("/17000/a", 17000),
        ("./17000/a", 17000),
        ("17000", 17000),
        ("+1700/a", None),
        ("1700a/b", None),
    ],
)
def test_timecode_rule_matches_socs(remote, code):
    assert timecode_of(remote) == code


def test_many_files_one_transaction(db, tmp_path):
    paths = make_files(tmp_path / "many", 600)
    result = db.add_files([entry_for(p) for p in paths])
    assert len(result.inserted) == 600 and db.count() == 600
    # More than one lookup chunk, two archives, old and new files mixed in one batch.
    more = make_files(tmp_path / "more", 500)
    batch = (
        [entry_for(p) for p in paths[::2]]
        + [entry_for(p) for p in more]
        + [
            make_entry(str(p), "17000/ts/" + os.path.basename(p), "timestreams")
            for p in paths[:450]
        ]
    )
    result = db.add_files(batch)
    assert len(result.duplicates) == 300 and len(result.inserted) == 950
    assert db.count() == 1550 and db.count("timestreams") == 450


def test_duplicate_check_searches_an_index(db, tmp_path):
    # A scan per batch would make every write slower as the table grows.
    db.add_files([entry_for(p) for p in make_files(tmp_path / "f", 3)])
    con = sqlite3.connect(db.db_path)
    plan = con.execute(
        "EXPLAIN QUERY PLAN SELECT archive_name, local_path, local_md5sum "
        "FROM supersync_v0 WHERE archive_name = ? AND local_path IN (?, ?)",
        ("smurf", "/a", "/b"),
    ).fetchall()
    con.close()
    assert "USING INDEX ix_socs_agents_files_archive_local_path" in str(plan)


@pytest.mark.parametrize(
    "local,remote,archive,code,message",
    [
        ("relative/file.dat", "17000/x", "smurf", "relative_path", "relative"),
        ("/data/../etc/passwd", "17000/x", "smurf", "dotdot_path", "'..'"),
        ("/data/none/such/file.dat", "17000/x", "smurf", "missing_file", "does not exist"),
        ("{file}", "17000/x", "nosuch", "unknown_archive", "unknown archive 'nosuch'"),
        ("{file}", "../17000/x", "smurf", "remote_escape", "escape"),
        ("{file}", "/abs/x", "smurf", "remote_escape", "absolute"),
        ("{file}", "17000/with space", "smurf", "bad_remote_path", "white space"),
        ("{file}", "", "smurf", "bad_remote_path", "empty"),
        ("", "17000/x", "smurf", "bad_path", "non-empty"),
    ],
)
def test_bad_input_is_refused_naming_file_and_reason(
    tmp_path, local, remote, archive, code, message
):
    f = tmp_path / "real.dat"
    f.write_bytes(b"x")
    local = local.replace("{file}", str(f))
    with pytest.raises(BadFileEntry) as err:
        make_entry(local, remote, archive)
    assert err.value.code == code
    assert message in str(err.value)
    if local:
        assert local.split("/")[-1] in str(err.value)


def test_directory_is_refused(tmp_path):
    with pytest.raises(BadFileEntry, match="is a directory"):
        make_entry(str(tmp_path), "17000/x", "smurf")


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 100_000])
def test_md5_of_small_files_in_one_read(tmp_path, size):
    import hashlib

    p = tmp_path / "f.bin"
    data = os.urandom(size)
    p.write_bytes(data)
    assert md5_small_file(str(p), 100_000) == hashlib.md5(data).hexdigest()
    if size:
        assert md5_small_file(str(p), size - 1) is None, "bigger than the limit"


def test_md5_of_small_files_refuses_with_reason(tmp_path):
    (tmp_path / "file").write_text("x")
    cases = [
        (tmp_path / "missing", "missing_file"),
        (tmp_path, "bad_path"),
        (tmp_path / "file" / "below", "bad_path"),
    ]
    for path, code in cases:
        with pytest.raises(BadFileEntry) as err:
            md5_small_file(str(path), 1 << 20)
        assert err.value.code == code, path


def test_md5_is_chunked_and_right(tmp_path):
    import hashlib

    p = tmp_path / "big.bin"
    data = os.urandom(3 * (1 << 20) + 17)
    p.write_bytes(data)
    assert md5_file(str(p), chunk_bytes=4096) == hashlib.md5(data).hexdigest()


def test_locked_database_raises_and_writes_nothing(tmp_path):
    db = SupRsyncDB(str(tmp_path / "s.db"), busy_timeout_ms=200)
    (p,) = make_files(tmp_path / "d", 1)
    locker = sqlite3.connect(db.db_path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(sqlalchemy.exc.OperationalError, match="locked"):
            db.add_files([entry_for(p)])
    finally:
        locker.execute("ROLLBACK")
    assert db.count() == 0
    assert len(db.add_files([entry_for(p)]).inserted) == 1


def test_indexes_added_to_a_socs_made_database(tmp_path):
    path = str(tmp_path / "socs.db")
    con = sqlite3.connect(path)
    con.execute(
        "CREATE TABLE supersync_v0 (id INTEGER NOT NULL, local_path VARCHAR NOT NULL,"
        " local_md5sum VARCHAR NOT NULL, archive_name VARCHAR NOT NULL, remote_path "
        "VARCHAR NOT NULL, timestamp FLOAT NOT NULL, remote_md5sum VARCHAR, copied "
        "FLOAT, removed FLOAT, failed_copy_attempts INTEGER, deletable BOOLEAN, "
        "ignore BOOLEAN, PRIMARY KEY (id))"
    )
    con.commit()
    con.close()
    SupRsyncDB(path).close()
    names = {r[1] for r in sqlite3.connect(path).execute("PRAGMA index_list(supersync_v0)")}
    assert "ix_socs_agents_files_archive_local_path" in names


def test_concurrent_writers_never_duplicate(tmp_path):
    path = str(tmp_path / "c.db")
    SupRsyncDB(path).close()
    files = make_files(tmp_path / "d", 50)
    entries = [entry_for(p) for p in files]
    errors = []

    def writer():
        db = SupRsyncDB(path)
        try:
            db.add_files(entries)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)
        finally:
            db.close()

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    db = SupRsyncDB(path)
    assert db.count() == 50 and len(db.timecode_dirs()) == 1


@pytest.mark.parametrize("echo", [False, True])
def test_add_rows_skips_duplicates_with_and_without_echo(tmp_path, echo):
    # --echo-sql writes through SQLAlchemy (which logs), otherwise plain sqlite3: same rows.
    db = SupRsyncDB(str(tmp_path / "db" / "s.db"), echo=echo)
    rows = [
        (f"/data/f{i}", f"{i:032x}", "smurf", f"17000/c/f{i}", 1.7e9 + i, i % 2 == 0)
        for i in range(150)
    ]  # more than one multi-row INSERT
    first = db.add_rows(rows + rows[:3])
    assert (first.inserted, first.duplicates) == (150, 3)
    assert first.new_timecodes == [(17000, "smurf")]
    again = db.add_rows(rows[:10])
    assert (again.inserted, again.duplicates, again.new_timecodes) == (0, 10, [])
    stored = (
        sqlite3.connect(db.db_path)
        .execute(
            "SELECT local_path, local_md5sum, archive_name, remote_path, timestamp, deletable, "
            "failed_copy_attempts, ignore FROM supersync_v0 ORDER BY id"
        )
        .fetchall()
    )
    assert stored == [row[:5] + (int(row[5]), 0, 0) for row in rows]
    db.close()


# ---- allowed roots -----------------------------------------------------------------------


def test_allowed_roots_refuse_outside_links_and_dotdot(tmp_path):
    from socs_agents.db.entries import AllowedRoots, BadFileEntry

    root = tmp_path / "data"
    root.mkdir()
    inside = root / "a.dat"
    inside.write_bytes(b"x")
    secret = tmp_path / "id_rsa"
    secret.write_bytes(b"key")
    (root / "link").symlink_to(secret)
    (root / "dirlink").symlink_to(tmp_path)
    roots = AllowedRoots([str(root)])
    assert roots.check(str(inside)) == str(inside)
    for bad in (
        str(secret),
        str(root / "link"),
        str(root / "dirlink" / "id_rsa"),
        str(root / ".." / "id_rsa"),
        str(tmp_path / "data2" / "x"),
    ):
        try:
            roots.check(bad)
        except BadFileEntry as e:
            assert e.code == "outside_allowed_root"
        else:
            raise AssertionError(f"{bad} was allowed")


def test_allowed_root_that_is_a_link_is_resolved(tmp_path):
    from socs_agents.db.entries import AllowedRoots

    real = tmp_path / "mnt" / "smurf"
    real.mkdir(parents=True)
    (tmp_path / "smurf_data").symlink_to(real)
    (real / "f.g3").write_bytes(b"g3")
    roots = AllowedRoots([str(tmp_path / "smurf_data")])
    assert roots.check(str(tmp_path / "smurf_data" / "f.g3")) == str(real / "f.g3")


def test_the_entry_rules_and_the_orchestrator_start_without_sqlalchemy():
    """``socs_agents.db`` imports SQLAlchemy only when a database class is asked for: the
    FileOrchestrator (which opens SupRsync later, on its registrar) starts without it."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import socs_agents.agents.file_orchestrator.agent\n"
        "from socs_agents.db import BadFileEntry, make_entry\n"
        "assert 'sqlalchemy' not in sys.modules, 'imported at start'\n"
        "from socs_agents.db import SupRsyncDB\n"
        "import socs_agents.db as db\n"
        "assert 'sqlalchemy' in sys.modules and db.SupRsyncDB is SupRsyncDB\n"
        "try:\n"
        "    db.NoSuchName\n"
        "except AttributeError:\n"
        "    print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr
