"""The meta endpoints: /openapi.json describes every route the server answers, /docs renders it
offline with the daemon's own assets, and /metrics labels requests by route template."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

import pytest

from harness import FAKECLI_DIR, world  # noqa: F401  (fixture)

METHODS = ("get", "put", "post", "delete", "patch", "head", "options")

# Every path the contract names (plus the Anthropic models listing), as (method, concrete path,
# body). Bodies are empty or invalid on purpose: nothing here may start a CLI.
CANDIDATES = [
    ("POST", "/api/v1/prompt", b"{}"),
    ("POST", "/api/v1/parallel", b"{}"),
    ("POST", "/api/v1/chain", b"{}"),
    ("POST", "/api/v1/compare", b"{}"),
    ("GET", "/api/v1/backends", None),
    ("GET", "/api/v1/sessions", None),
    ("GET", "/api/v1/sessions/abc", None),
    ("DELETE", "/api/v1/sessions/abc", None),
    ("GET", "/openai/v1/models", None),
    ("GET", "/openai/v1/models/no-such-model", None),
    ("POST", "/openai/v1/chat/completions", b"{}"),
    ("POST", "/anthropic/v1/messages", b"{}"),
    ("GET", "/anthropic/v1/models", None),
    ("GET", "/anthropic/v1/models/no-such-model", None),
    ("GET", "/health", None),
    ("GET", "/metrics", None),
    ("GET", "/openapi.json", None),
    ("GET", "/docs", None),
    ("GET", "/docs/app.js", None),
    ("GET", "/docs/style.css", None),
]


def request(method: str, url: str, body: bytes | None = None, headers: dict | None = None):
    """(status, headers, raw body) of one request."""
    req = urllib.request.Request(url, data=body, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def is_no_route(status: int, raw: bytes) -> bool:
    """The server's answer for a path it does not route at all."""
    if status != 404:
        return False
    try:
        body = json.loads(raw)
    except ValueError:
        return False
    text = json.dumps(body)
    return "no route for" in text


def template_of(spec: dict, path: str) -> str | None:
    """The documented path template matching a concrete path."""
    for template in spec["paths"]:
        pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path):
            return template
    return None


def resolve(spec: dict, node):
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), ref
        target = spec
        for part in ref[2:].split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
    return node


SPEC_URI = "urn:clinvk:openapi"


def pointer(spec: dict, node_path: list[str]) -> str:
    """The JSON pointer of a node given as keys from the root, following a `$ref` response."""
    node, parts = spec, []
    for key in node_path:
        node = node[key]
        parts.append(key.replace("~", "~0").replace("/", "~1"))
        if isinstance(node, dict) and "$ref" in node and key != "schema":
            ref = node["$ref"]
            parts = ref[2:].split("/")
            node = resolve(spec, node)
    return "#/" + "/".join(parts)


def validate(spec: dict, schema_pointer: str, value, where: str):
    """Validates a JSON value with a real JSON Schema 2020-12 validator against a schema of the
    document (its `$ref`s resolved inside the document)."""
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    registry = Registry().with_resource(SPEC_URI, Resource(contents=spec, specification=DRAFT202012))
    from urllib.parse import quote
    validator = Draft202012Validator({"$ref": SPEC_URI + quote(schema_pointer, safe="#/~")},
                                     registry=registry)
    errors = sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
    assert not errors, f"{where}: " + "; ".join(
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors[:5])


@pytest.fixture
def served(world):  # noqa: F811
    world.env["CLINVK_SERVER_METRICS_ENABLED"] = "true"
    # A usable claude (the `ok` fault CLI), so dry runs answer; nothing here runs it.
    world.write_config(f"backends:\n  claude:\n    command: {FAKECLI_DIR / 'ok'}\n    mode: oneshot\n")
    world.start_daemon()
    url = world.url
    status, headers, raw = request("GET", url + "/openapi.json")
    assert status == 200, raw
    assert headers["Content-Type"].startswith("application/json")
    return url, json.loads(raw)


def test_openapi_document_is_a_valid_openapi_31_description(served):
    url, spec = served
    assert re.match(r"^3\.1\.\d+$", spec["openapi"])
    health = json.loads(request("GET", url + "/health")[2])
    assert spec["info"]["title"]
    assert spec["info"]["version"] == health["version"], "info.version is the daemon's version"

    # Security: Bearer and X-Api-Key, both optional (the empty requirement is an alternative).
    schemes = spec["components"]["securitySchemes"]
    assert {"type": "http", "scheme": "bearer"}.items() <= schemes["bearerAuth"].items()
    assert schemes["apiKeyHeader"]["in"] == "header" and schemes["apiKeyHeader"]["name"] == "X-Api-Key"
    assert {} in spec["security"]
    for path in ("/health", "/openapi.json", "/docs"):
        assert spec["paths"][path]["get"]["security"] == [{}], f"{path} never needs a key"

    # Every $ref resolves; every operation is complete; operationIds are unique.
    def walk(node, where):
        if isinstance(node, dict):
            if "$ref" in node:
                resolve(spec, node)
            for k, v in node.items():
                walk(v, f"{where}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}/{i}")
    walk(spec, "#")
    ids = set()
    for path, item in spec["paths"].items():
        assert path.startswith("/")
        params = {p["name"] for p in map(lambda p: resolve(spec, p), item.get("parameters", []))}
        for method in METHODS:
            op = item.get(method)
            if op is None:
                continue
            where = f"{method.upper()} {path}"
            assert op.get("summary") and op.get("tags"), where
            assert op["operationId"] not in ids, where
            ids.add(op["operationId"])
            op_params = params | {resolve(spec, p)["name"] for p in op.get("parameters", [])}
            for name in re.findall(r"\{([^}]+)\}", path):
                assert name in op_params, f"{where}: path parameter {name} is not declared"
            assert any(code.startswith("2") for code in op["responses"]), where
            for code, resp in op["responses"].items():
                assert re.match(r"^[1-5]\d\d$", code), where
                assert resolve(spec, resp).get("description"), f"{where} {code}"
            if "requestBody" in op:
                assert "application/json" in resolve(spec, op["requestBody"])["content"], where

    # Streaming answers and per-style error responses.
    p = spec["paths"]
    ok = lambda path: p[path]["post"]["responses"]["200"]["content"]  # noqa: E731
    assert "application/x-ndjson" in ok("/api/v1/prompt")
    assert "text/event-stream" in ok("/openai/v1/chat/completions")
    assert "text/event-stream" in ok("/anthropic/v1/messages")
    for path, schema in [("/api/v1/prompt", "NativeError"),
                         ("/openai/v1/chat/completions", "OpenAIError"),
                         ("/anthropic/v1/messages", "AnthropicError")]:
        codes = ["400", "401", "404", "413", "429", "503"]
        if schema != "NativeError":  # a failed run is a 200 in the native API
            codes += ["502", "504"]
        for code in codes:
            resp = resolve(spec, p[path]["post"]["responses"][code])
            got = resp["content"]["application/json"]["schema"]["$ref"]
            assert got == f"#/components/schemas/{schema}", (path, code)


def test_openapi_documents_every_path_the_server_routes(served):
    url, spec = served
    answered = []
    for method, path, body in CANDIDATES:
        status, _, raw = request(method, url + path, body)
        if is_no_route(status, raw):
            continue
        answered.append((method, path))
        template = template_of(spec, path)
        assert template, f"{method} {path} is routed ({status}) but not in /openapi.json"
        assert method.lower() in spec["paths"][template], \
            f"{method} {path} is routed ({status}) but {template} documents only {sorted(spec['paths'][template])}"
    # Everything in the contract's native and meta parts is served here; the compatible APIs
    # when their module is built in.
    for method, path, _ in CANDIDATES:
        if path.startswith(("/api/", "/health", "/metrics", "/openapi", "/docs")):
            assert (method, path) in answered, f"{method} {path} is documented but not routed"
    compat = any(p.startswith("/openai/") for _, p in answered)
    for template, item in spec["paths"].items():
        for method in METHODS:
            if method not in item:
                continue
            if template.startswith(("/openai/", "/anthropic/")) and not compat:
                continue
            concrete = template.replace("{id}", "abc").replace("{asset}", "app.js")
            status, _, raw = request(method.upper(), url + concrete,
                                     b"{}" if method == "post" else None)
            assert not is_no_route(status, raw), f"{method.upper()} {template} is documented but not routed"
    # And an unknown path is not.
    status, _, raw = request("GET", url + "/api/v1/nope")
    assert is_no_route(status, raw)


def test_real_answers_have_the_documented_shapes(served):
    url, spec = served
    cases = [
        ("GET", "/health", None, 200),
        ("GET", "/api/v1/backends", None, 200),
        ("GET", "/api/v1/sessions?limit=5", None, 200),
        ("GET", "/api/v1/sessions/abcdefgh-none", None, 404),
        ("DELETE", "/api/v1/sessions/abcdefgh-none", None, 404),
        ("POST", "/api/v1/prompt", b"{}", 400),
        ("POST", "/api/v1/prompt", b"{not json", 400),
        ("POST", "/api/v1/prompt", json.dumps({"backend": "claude", "prompt": "hi", "dry_run": True}).encode(), 200),
        ("POST", "/api/v1/parallel", json.dumps({"tasks": [{"backend": "claude", "prompt": "hi"}], "dry_run": True}).encode(), 200),
        ("POST", "/api/v1/chain", json.dumps({"steps": [{"backend": "claude", "prompt": "hi"}], "dry_run": True}).encode(), 200),
        ("POST", "/api/v1/compare", json.dumps({"backends": ["claude"], "prompt": "hi", "dry_run": True}).encode(), 200),
    ]
    for method, path, body, want in cases:
        status, headers, raw = request(method, url + path, body)
        assert status == want, (method, path, status, raw[:300])
        template = template_of(spec, path.split("?")[0])
        where = pointer(spec, ["paths", template, method.lower(), "responses", str(status),
                               "content", "application/json", "schema"])
        validate(spec, where, json.loads(raw), f"{method} {path}")
        assert headers["X-Request-Id"]


def test_a_real_run_and_its_stream_match_the_documented_schemas(served):
    """A prompt that really runs (the `ok` fake CLI): its JSON result and every line of its
    NDJSON stream validate against the document; a wrong answer would not."""
    url, spec = served
    body = {"backend": "claude", "prompt": "hi"}
    status, _, raw = request("POST", url + "/api/v1/prompt", json.dumps(body).encode())
    assert status == 200, raw[:300]
    result = json.loads(raw)
    ok = pointer(spec, ["paths", "/api/v1/prompt", "post", "responses", "200", "content",
                        "application/json", "schema"])
    validate(spec, ok, result, "prompt result")
    assert result["exit_code"] == 0 and result["session_id"]
    # The validator is not a rubber stamp: a result without its backend is refused.
    broken = dict(result)
    del broken["backend"]
    del broken["output"]
    with pytest.raises(AssertionError):
        validate(spec, ok, broken, "broken result")

    body["output_format"] = "stream-json"
    status, headers, raw = request("POST", url + "/api/v1/prompt", json.dumps(body).encode())
    assert status == 200 and headers["Content-Type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
    assert lines and lines[-1]["type"] == "done", lines
    line_schema = pointer(spec, ["paths", "/api/v1/prompt", "post", "responses", "200", "content",
                                 "application/x-ndjson", "schema"])
    for i, line in enumerate(lines):
        validate(spec, line_schema, line, f"stream line {i}")
    assert [line["sequence"] for line in lines] == list(range(len(lines)))
    with pytest.raises(AssertionError):
        validate(spec, line_schema, {**lines[-1], "type": "finished"}, "unknown event type")


def test_docs_page_works_offline_with_the_daemons_own_assets(served):
    url, _ = served
    status, headers, raw = request("GET", url + "/docs")
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    html = raw.decode()
    assert "<script" in html
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    want = {".js": "text/javascript", ".css": "text/css"}
    loaded = set()
    for asset in assets:
        assert not re.match(r"^(https?:)?//", asset), f"external URL in /docs: {asset}"
        if asset.endswith((".js", ".css")):
            status, h, body = request("GET", url + asset)
            assert status == 200, asset
            assert h["Content-Type"].startswith(want[asset[asset.rfind("."):]]), (asset, h["Content-Type"])
            text = body.decode()
            assert not re.search(r"https?://", text), f"{asset} references an external URL"
            loaded.add(asset[asset.rfind("."):])
    assert loaded == {".js", ".css"}, assets
    assert not re.search(r"https?://", html)
    # The browser is told to load nothing from elsewhere.
    assert "default-src 'none'" in headers.get("Content-Security-Policy", "")
    # The script renders the daemon's own document.
    assert "/openapi.json" in request("GET", url + "/docs/app.js")[2].decode()
    # Unknown assets are 404; the docs need no key and answer only GET.
    assert request("GET", url + "/docs/nope.js")[0] == 404
    assert request("POST", url + "/docs", b"{}")[0] == 405


def test_metrics_label_requests_by_route_template(served):
    url, _ = served
    assert request("GET", url + "/api/v1/sessions/abcdefgh-none")[0] == 404
    assert request("GET", url + "/api/v1/sessions/abcdef-123")[0] == 404
    status, headers, raw = request("GET", url + "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    series = []
    for line in raw.decode().splitlines():
        m = re.match(r"^clinvk_requests_total\{(.*)\} (\S+)$", line)
        if m:
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(1)))
            series.append((labels, float(m.group(2))))
    assert series, raw.decode()[:2000]
    assert all(set(labels) == {"method", "path", "status"} for labels, _ in series), series
    hit = [v for labels, v in series
           if labels == {"method": "GET", "path": "/api/v1/sessions/{id}", "status": "404"}]
    assert hit and hit[0] >= 2, series
    assert not any("abc" in labels["path"] for labels, _ in series), "raw ids must not be labels"
    assert any(labels["path"] == "/openapi.json" for labels, _ in series)
