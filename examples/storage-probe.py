#!/usr/bin/env python3
# Storage per session: starts a token-issuer binary in a fresh directory, refreshes one
# session 1, 1,000 and 10,000 times, and prints the row counts and the database size:
# on SQLite the file after a checkpoint; on PostgreSQL (a database URL as the third
# argument, an empty database) the sessions' tables with their indexes, as they are and
# after a VACUUM. Usage: python3 examples/storage-probe.py target/release/token-issuer
# /tmp/probe-dir [postgres://postgres@127.0.0.1/probe]
import json, os, sqlite3, subprocess, time, urllib.request, urllib.parse, sys
binary, workdir = os.path.abspath(sys.argv[1]), sys.argv[2]
pg = sys.argv[3] if len(sys.argv) > 3 else None
os.makedirs(workdir, exist_ok=True)
env = dict(os.environ, ISSUER_BIND="127.0.0.1:18123", ISSUER_RATE_LIMIT_REFRESH_PER_FAMILY="off",
           ISSUER_RATE_LIMIT_LOGIN_PER_IP="off", ISSUER_LOG="warn")
if pg:
    env["ISSUER_DATABASE_URL"] = pg
p = subprocess.Popen([binary], cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
time.sleep(3)
base = "http://127.0.0.1:18123"
def post(path, data, js=False):
    if js:
        req = urllib.request.Request(base+path, data=json.dumps(data).encode(), headers={"content-type": "application/json"})
    else:
        req = urllib.request.Request(base+path, data=urllib.parse.urlencode(data).encode())
    return json.load(urllib.request.urlopen(req)) if not js else urllib.request.urlopen(req).status
email = "probe-%d@example.com" % time.time_ns()
post("/v1/users", {"email": email, "password": "a sound passphrase"}, js=True)
tok = post("/oauth/token", {"grant_type": "password", "client_id": "dev", "username": email, "password": "a sound passphrase"})["refresh_token"]
db = os.path.join(workdir, "data/token-issuer.db")
def psql(sql):
    return subprocess.run(["psql", pg, "-Atc", sql], check=True, capture_output=True, text=True).stdout.strip()
def pg_size():
    count = lambda t: int(psql("select count(*) from " + t))
    total = "select pg_total_relation_size('refresh_families') + pg_total_relation_size('refresh_tokens')"
    before = int(psql(total)); psql("VACUUM refresh_families, refresh_tokens")
    return count("refresh_families"), count("refresh_tokens"), "%d bytes, %d after VACUUM" % (before, int(psql(total)))
def size():
    if pg:
        return pg_size()
    c = sqlite3.connect(db); c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    fam = c.execute("select count(*) from refresh_families").fetchone()[0]
    toks = c.execute("select count(*) from refresh_tokens").fetchone()[0]
    pages = c.execute("pragma page_count").fetchone()[0]; ps = c.execute("pragma page_size").fetchone()[0]
    c.close(); return fam, toks, "%d bytes" % (pages*ps)
done = 0
for target in [1, 1000, 10000]:
    while done < target:
        tok = post("/oauth/token", {"grant_type": "refresh_token", "client_id": "dev", "refresh_token": tok})["refresh_token"]
        done += 1
    print("after %5d rotations: families %d, token rows %d, database %s" % ((done,) + size()))
p.terminate(); p.wait()
