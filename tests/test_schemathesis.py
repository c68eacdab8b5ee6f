"""schemathesis (pinned in requirements.txt) over the daemon's own /openapi.json: every
operation, examples + coverage + fuzzing + stateful phases, with fault-injection CLIs behind the
three backends (no model involved). Checks: no 5xx, every status code, content type, header and
body as the document declares. The summary is printed (`pytest -s` shows it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from harness import FAKECLI_DIR, world  # noqa: F401  (fixture)

CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_headers_conformance,response_schema_conformance")


def test_every_operation_conforms_to_the_openapi_document(world, tmp_path):
    ok = FAKECLI_DIR / "ok"
    world.write_config("backends:\n" + "".join(
        f"  {b}:\n    command: {ok}\n    mode: oneshot\n" for b in ("claude", "codex", "gemini"))
        + "limits:\n  kill_grace_secs: 1\n"
        # Keys made by POST /api/v1/keys must not close the API to the operations after it.
        + "server:\n  auth: off\n")
    world.start_daemon()
    import json
    import urllib.request
    doc = json.loads(urllib.request.urlopen(world.url + "/openapi.json", timeout=10).read())
    operations = {f"{m.upper()} {path}" for path, item in doc["paths"].items()
                  for m in item if m in ("get", "post", "put", "patch", "delete")}
    st = Path(sys.executable).parent / "st"
    r = subprocess.run(
        [str(st), "run", world.url + "/openapi.json", "--checks", CHECKS, "--max-examples", "25",
         "--seed", "20261130", "--request-timeout", "30", "--workers", "1",
         "--report", "junit", "--report-junit-path", str(tmp_path / "junit.xml")],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**world.env, "NO_COLOR": "1", "SCHEMATHESIS_TELEMETRY": "false"})
    summary = r.stdout[r.stdout.find("SUMMARY"):] if "SUMMARY" in r.stdout else r.stdout[-3000:]
    print(summary)
    assert r.returncode == 0, r.stdout[-12000:] + r.stderr[-2000:]
    # Every operation was exercised (schemathesis leaves out the document's own URL).
    import xml.etree.ElementTree as ET
    tested = {c.get("name") for c in ET.parse(tmp_path / "junit.xml").iter("testcase")} - {"Stateful tests"}
    assert tested == operations - {"GET /openapi.json"}, operations ^ tested
