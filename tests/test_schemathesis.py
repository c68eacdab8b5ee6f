"""schemathesis (pinned in requirements.txt) over the daemon's own /openapi.json: every
operation, examples + coverage + fuzzing + stateful phases, with fault-injection CLIs behind the
three backends (no model involved). Checks: no 5xx, every status code, content type, header and
body as the document declares. The summary is printed (`pytest -s` shows it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness import FAKECLI_DIR, world  # noqa: F401  (fixture)

CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_headers_conformance,response_schema_conformance")


@pytest.mark.parametrize("auth", ["off", "on"])
def test_every_operation_conforms_to_the_openapi_document(world, tmp_path, auth):
    """With auth off (keys made by POST /api/v1/keys must not close the API to the operations
    after it), and with auth on: every request carries an admin key, so the guards' own answers
    (401, 403, 429 of the auth-failure limiter) are checked against the document too."""
    ok = FAKECLI_DIR / "ok"
    world.write_config("backends:\n" + "".join(
        f"  {b}:\n    command: {ok}\n    mode: oneshot\n" for b in ("claude", "codex", "gemini"))
        + "limits:\n  kill_grace_secs: 1\n"
        + ("server:\n  auth: off\n" if auth == "off" else "server:\n  auth: required\n"))
    world.start_daemon()
    import json
    import urllib.request
    headers = []
    if auth == "on":
        r = world.ctl("keys", "add", "schemathesis", "--scope", "admin")
        assert r.returncode == 0, r.stderr
        headers = ["-H", f"Authorization: Bearer {r.stdout.strip()}"]
    doc = json.loads(urllib.request.urlopen(world.url + "/openapi.json", timeout=10).read())
    operations = {f"{m.upper()} {path}" for path, item in doc["paths"].items()
                  for m in item if m in ("get", "post", "put", "patch", "delete")}
    st = Path(sys.executable).parent / "st"
    r = subprocess.run(
        [str(st), "run", world.url + "/openapi.json", *headers, "--checks", CHECKS, "--max-examples", "25",
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


def test_the_guards_answers_are_documented_on_every_route(world):
    """The guards answer before any route: every operation documents their statuses, and the
    auth-failure limiter's real 429 on a route no test above reaches that way (/metrics) is the
    one the document declares."""
    import json
    import urllib.error
    import urllib.request
    world.env["CLINVK_API_KEYS"] = "the-key"
    world.write_config("server:\n  metrics_enabled: true\n")
    world.start_daemon()
    doc = json.loads(urllib.request.urlopen(world.url + "/openapi.json", timeout=10).read())
    for path, item in doc["paths"].items():
        for method, op in item.items():
            codes = set(op["responses"])
            assert {"403", "421", "429"} <= codes, (method, path, sorted(codes))
            if op.get("security") != [{}]:
                assert "401" in codes, (method, path, sorted(codes))

    def get(path, key):
        req = urllib.request.Request(world.url + path, headers={"Authorization": f"Bearer {key}"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
        except urllib.error.HTTPError as e:
            return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()

    for _ in range(12):
        if get("/api/v1/sessions", "a-wrong-key")[0] == 429:
            break
    status, headers, body = get("/metrics", "the-key")
    assert status == 429 and int(headers["retry-after"]) >= 1, (status, body)
    assert "429" in doc["paths"]["/metrics"]["get"]["responses"]
    assert json.loads(body)["code"] == "too_many_auth_failures"
