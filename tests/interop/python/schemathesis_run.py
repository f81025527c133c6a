"""Runs `schemathesis run` for tests/interop/run.sh and prints its per-operation counts.

    python schemathesis_run.py --hooks HOOKS.py --config schemathesis.toml --junit OUT.xml \
        -- SCHEMA_URL [schemathesis run options]

Schemathesis prints its own report; this adds `schemathesis: N passed, N failed`
(operations, and the stateful phase as one more, from its JUnit report) and checks that every operation of the document
was tested, so a filter or a schema-loading problem cannot pass by testing less.
Exits non-zero when schemathesis does, or when an operation was not run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

TIME_LIMIT = int(os.environ.get("INTEROP_SCHEMATHESIS_TIME_LIMIT", "600"))
METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hooks", required=True)
    parser.add_argument("--junit", required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("schema")
    parser.add_argument("rest", nargs=argparse.REMAINDER)
    args = parser.parse_args()

    with urllib.request.urlopen(args.schema, timeout=10) as r:
        spec = json.load(r)
    expected = {
        f"{method.upper()} {path}" for path, item in spec["paths"].items() for method in item if method in METHODS
    }

    junit = Path(args.junit)
    junit.unlink(missing_ok=True)
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": str(Path(args.hooks).resolve()),
    }
    cmd = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file",
        args.config,
        "run",
        args.schema,
        *args.rest,
        "--report",
        "junit",
        "--report-junit-path",
        str(junit),
    ]
    try:
        status = subprocess.call(cmd, env=env, timeout=TIME_LIMIT)
    except subprocess.TimeoutExpired:
        print(f"schemathesis: still running after {TIME_LIMIT} s; stopped")
        print(f"schemathesis: 0 passed, {len(expected)} failed")
        return 1

    if not junit.exists():
        print(f"schemathesis: exit status {status} and no JUnit report")
        print(f"schemathesis: 0 passed, {len(expected)} failed")
        return 1
    passed, failed, seen = [], [], set()
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = case.get("name", "")
        seen.add(name)
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(name)
        elif case.find("skipped") is not None:
            # A skipped operation tested nothing: that is not a pass.
            failed.append(f"{name} (skipped)")
        else:
            passed.append(name)
    missing = sorted(expected - seen)
    for name in missing:
        print(f"schemathesis: not tested: {name}")
    for name in failed:
        print(f"schemathesis: FAILED {name}")
    print(f"schemathesis: {len(passed)} passed, {len(failed) + len(missing)} failed")
    return 1 if status != 0 or failed or missing else 0


if __name__ == "__main__":
    sys.exit(main())
