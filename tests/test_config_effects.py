"""Config keys do what they say (or are refused): `output.*` shapes what `clinvk` prints,
`unified_flags.output_format` is the native API's default, `session.store_token_usage: false`
keeps no token counts, and keys no CLI can honour stop the daemon with the key named."""

from __future__ import annotations

import json
import urllib.request

from conftest import uses_default_port
from harness import FAKECLI_DIR, World, binary, world  # noqa: F401  (fixture)

OK = FAKECLI_DIR / "ok"


def post(url: str, body: dict):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.headers.get("content-type"), r.read().decode()


@uses_default_port  # `clinvk "prompt"` starts the daemon on 127.0.0.1:8080
def test_output_settings_shape_what_clinvk_prints(world):
    world.write_config(f"backends:\n  claude:\n    command: {OK}\n    mode: oneshot\n"
                       "output:\n  format: json\n  show_tokens: true\n  show_timing: true\n")
    r = world.clinvk("-b", "claude", "hello", timeout=60)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)  # output.format: json
    assert result["output"] == "fakecli reply to: hello" and result["exit_code"] == 0
    # -o wins over the config; show_tokens/show_timing add their lines after a text answer.
    r = world.clinvk("-b", "claude", "-o", "text", "again", timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "fakecli reply to: again"
    assert "tokens: 10 in, 4 out" in r.stderr and "time: " in r.stderr, r.stderr


def test_unified_output_format_and_token_storage(world):
    world.write_config(f"backends:\n  claude:\n    command: {OK}\n    mode: oneshot\n"
                       "unified_flags:\n  output_format: stream-json\n"
                       "session:\n  store_token_usage: false\n")
    url = world.start_daemon().status["http_url"]
    ctype, text = post(url + "/api/v1/prompt", {"backend": "claude", "prompt": "hi"})
    assert ctype == "application/x-ndjson", ctype
    events = [json.loads(l) for l in text.splitlines() if l.strip()]
    assert events[-1]["type"] == "done", events
    sid = events[-1]["content"]["session_id"]
    # A request may still ask for the JSON answer.
    ctype, _ = post(url + "/api/v1/prompt", {"backend": "claude", "prompt": "hi", "output_format": "json"})
    assert ctype == "application/json"
    with urllib.request.urlopen(f"{url}/api/v1/sessions/{sid}", timeout=30) as r:
        s = json.loads(r.read())
    assert s["turns"][0]["usage"] == {"input_tokens": 0, "output_tokens": 0}, s
    assert s["token_usage"] == {"input_tokens": 0, "output_tokens": 0}, s


def test_settings_no_cli_honours_are_refused(world):
    for text, key in [("unified_flags:\n  verbose: true\n", "unified_flags.verbose"),
                      ("unified_flags:\n  max_tokens: 100\n", "unified_flags.max_tokens")]:
        world.write_config(text)
        r = world.run(binary("clinvkd"), "--port", "0", timeout=30)
        assert r.returncode != 0 and key in r.stderr, (r.returncode, r.stderr)
