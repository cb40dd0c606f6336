"""A newcomer's path through operations with the `tenantai` binary: back up a
`tenantai dev` deployment, delete its table, restore it, and the same keys and
usage are back; then export a tenant, erase it, and show that nothing of it
remains in the table or the blobs (but its erasure receipt), and that the
audit chains verify.

It runs its own `tenantai dev` (the table must be deleted while no process
holds it), from target/debug, on a free port and a fresh data dir.
"""

import json
import os
import pathlib
import signal
import socket
import sqlite3
import subprocess
import tarfile
import time

import httpx
import openai

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = ROOT / "target/debug/tenantai"
MODEL_DIR = os.environ.get("TENANTAI_MODEL_DIR", str(ROOT / "models/all-MiniLM-L6-v2"))
MODEL = "all-MiniLM-L6-v2"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_dev(data, log):
    port = free_port()
    proc = subprocess.Popen(
        [BIN, "dev", "--data-dir", data, "--port", str(port), "--model-dir", MODEL_DIR],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        assert proc.poll() is None, "tenantai dev exited early"
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            if (data / "credentials.json").exists():
                return proc, f"http://127.0.0.1:{port}"
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError("tenantai dev did not start")


def stop_dev(proc):
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)


def cli(base, token, *args):
    env = dict(os.environ, TENANTAI_ENDPOINT=base, TENANTAI_ADMIN_TOKEN=token)
    done = subprocess.run([BIN, *map(str, args)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"tenantai {' '.join(map(str, args))}: {done.stderr}"
    return done.stdout


def usage(base, key):
    r = httpx.get(f"{base}/v1/usage", headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    return r.json()


def wait_for(predicate, what, timeout=15.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_backup_delete_restore_export_erase(tmp_path):
    data = tmp_path / "data"
    log = open(tmp_path / "dev.log", "w")
    dev, base = start_dev(data, log)
    try:
        creds = json.loads((data / "credentials.json").read_text())
        token, key = creds["admin_token"], creds["api_key"]
        demo = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
        for text in ["hello world", "backups and restores"]:
            demo.embeddings.create(model=MODEL, input=[text, "again " + text])
        before = wait_for(lambda: (u := usage(base, key))["totals"]["requests"] == 2 and u, "usage")
        # A second tenant, to export and erase later.
        leaving = json.loads(cli(base, token, "tenants", "create", "--name", "Leaving", "--json"))["id"]
        leaving_key = json.loads(cli(base, token, "keys", "create", "--tenant", leaving, "--json"))["secret"]
        openai.OpenAI(base_url=f"{base}/v1", api_key=leaving_key, max_retries=0).embeddings.create(
            model=MODEL, input="goodbye"
        )
        wait_for(lambda: usage(base, leaving_key)["totals"]["requests"] == 1, "the second tenant's usage")

        out = cli(base, token, "backup", "--data-dir", data)
        assert "backup " in out and "items in" in out, out
        listed = json.loads(cli(base, token, "backup", "--data-dir", data, "--list", "--json"))
        assert len(listed["data"]) == 1 and listed["data"][0]["complete"] is True
    finally:
        stop_dev(dev)

    # The table is gone; the restore brings it back.
    for suffix in ["", "-wal", "-shm"]:
        (data / f"tenantai.db{suffix}").unlink(missing_ok=True)
    out = cli(base, token, "restore", "--data-dir", data)
    assert "restored backup" in out, out
    # A second restore is refused: the table is no longer empty.
    env = dict(os.environ)
    again = subprocess.run([BIN, "restore", "--data-dir", data], env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode != 0 and "not empty" in again.stderr, again.stderr

    dev, base = start_dev(data, log)
    try:
        assert usage(base, key) == before, "the same usage is back"
        demo = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
        assert len(demo.embeddings.create(model=MODEL, input="the same key works").data) == 1

        # GDPR export: one archive with an index, downloaded.
        archive = tmp_path / "leaving.tar.gz"
        cli(base, token, "tenants", "export", leaving, "--out", archive)
        with tarfile.open(archive) as tar:
            index = json.load(tar.extractfile("index.json"))
            names = tar.getnames()
        assert index["tenant_id"] == leaving
        assert "items/usage.jsonl" in names and "items/api_keys.jsonl" in names

        # GDPR erasure: confirmed by repeating the id; the key is refused at once.
        refused = subprocess.run(
            [BIN, "tenants", "erase", leaving, "--confirm", "someone-else"],
            env=dict(os.environ, TENANTAI_ENDPOINT=base, TENANTAI_ADMIN_TOKEN=token),
            capture_output=True,
            text=True,
        )
        assert refused.returncode != 0
        out = cli(base, token, "tenants", "erase", leaving, "--confirm", leaving)
        assert f"erased {leaving}" in out, out
        try:
            openai.OpenAI(base_url=f"{base}/v1", api_key=leaving_key, max_retries=0).embeddings.create(
                model=MODEL, input="still here?"
            )
            raise AssertionError("the erased tenant's key still works")
        except openai.AuthenticationError:
            pass
        receipts = json.loads(cli(base, token, "audit", "list", "--action", "tenant.erase", "--json"))
        assert receipts["data"][0]["target"] == leaving
        verified = json.loads(cli(base, token, "audit", "verify", "--json"))
        assert all(v["ok"] for v in verified["data"]), verified
        exported = tmp_path / "platform-audit.jsonl"
        cli(base, token, "audit", "export", "--out", exported)
        cli(base, token, "audit", "verify", "--file", exported)
    finally:
        stop_dev(dev)

    # Nothing of it remains: in the table only the receipt names it; in the
    # blobs only the receipt's copy does (backups age out through retention).
    db = sqlite3.connect(data / "tenantai.db")
    rows = [r for r in db.execute("SELECT pk, sk, attrs FROM items") if leaving in "".join(map(str, r))]
    assert [r[0] for r in rows] == ["AUDIT#_platform"], rows
    blobs = data / "blobs" / "objects"
    named = [p.relative_to(blobs) for p in blobs.rglob("*") if leaving in str(p) and "backups" not in p.parts]
    assert named == [pathlib.Path(f"erasures/{leaving}.json")], named
