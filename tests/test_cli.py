"""`rtcproctor codes` writes into the database the running server uses."""

from __future__ import annotations

import csv
import io

from tests.sioclient import Peer
from tests.support import rtcproctor


async def test_codes_from_a_roster_work_on_the_running_server(server, tmp_path):
    roster = tmp_path / "roster.csv"
    roster.write_text("name\nAnn Lee\nBob Stone\n")
    out = rtcproctor(
        "codes",
        "--names",
        str(roster),
        "--data-dir",
        str(server.data_dir),
        "--base-url",
        "https://exam.example.org",
    )
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [r["name"] for r in rows] == ["Ann Lee", "Bob Stone"]
    assert rows[0]["link"] == f"https://exam.example.org/student#code={rows[0]['code']}"
    assert "proctor key:" in out.stderr
    key = out.stderr.split("proctor key: ")[1].split()[0]
    extra = rtcproctor(
        "codes", "--count", "1", "--key", key, "--json", "--data-dir", str(server.data_dir)
    )
    assert '"proctor_key": "' + key in extra.stdout

    page = await Peer(server.url).connect()
    try:
        ack = await page.call("student:join", {"code": rows[1]["code"]})
        assert ack["ok"] and ack["student"]["name"] == "Bob Stone"
    finally:
        await page.close()


def test_backup_copies_the_live_database_and_names_come_from_stdin(server, tmp_path):
    import sqlite3

    out = rtcproctor(
        "codes", "--names", "-", "--data-dir", str(server.data_dir), input="Ann\nBob\n"
    )
    assert [r["name"] for r in csv.DictReader(io.StringIO(out.stdout))] == ["Ann", "Bob"]
    copy = tmp_path / "backup" / "copy.db"
    rtcproctor("backup", str(copy), "--data-dir", str(server.data_dir))
    with sqlite3.connect(copy) as db:
        assert db.execute("select count(*) from students").fetchone() == (2,)
