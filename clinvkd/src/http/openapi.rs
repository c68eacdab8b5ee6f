//! `/openapi.json` (the OpenAPI 3.1 description of the whole HTTP API) and `/docs` (an offline
//! documentation page that renders it: the page and its assets are embedded, no CDN).
//!
//! The document is generated, once, from the code it describes: the paths from the route table
//! (`routes::ROUTES`, with one `describe` arm per operation — the match is exhaustive, so a new
//! operation does not compile until it is documented), the native API's schemas from the Rust
//! types of its requests and answers (`schemars`), and the error responses from the table of
//! statuses below. Only what the daemon parses at its edge as foreign JSON — the OpenAI and
//! Anthropic wire formats and the three error shapes — is written by hand, in
//! `openapi-base.json`, together with the document's prose (info, tags, security schemes).

use super::error::{ApiError, Kind};
use super::routes::{Access, Op, ROUTES};
use crate::error::Code;
use clinvk_shared::api;
use schemars::generate::{Contract, SchemaSettings};
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{json, Map, Value};
use std::sync::OnceLock;
use warp::http::{HeaderValue, Method, StatusCode};
use warp::reply::Response;

const BASE: &str = include_str!("openapi-base.json");
const INDEX_HTML: &str = include_str!("docs/index.html");
const APP_JS: &str = include_str!("docs/app.js");
const STYLE_CSS: &str = include_str!("docs/style.css");

/// One server-sent event as OpenAPI before 3.2 documents a `text/event-stream` answer: each
/// event's `data` holds one JSON chunk (its schema in `x-stream-item`) or `[DONE]`.
fn sse_event() -> Value {
    json!({
        "type": "object",
        "properties": {
            "event": {"type": "string"},
            "data": {"type": "string"},
            "id": {"type": "string"},
            "retry": {"type": "integer"},
        },
        "required": ["data"],
    })
}

/// The docs only ever load from the daemon itself.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The document as served (built once).
pub(crate) fn document() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        serde_json::to_string_pretty(&build()).expect("the OpenAPI document serialises")
    })
}

/// The schema generators: requests are described as the daemon reads them (fields with a
/// default are optional), answers as it writes them (every field it always writes is required).
struct Schemas {
    requests: SchemaGenerator,
    answers: SchemaGenerator,
}

impl Schemas {
    fn new() -> Self {
        let settings = |contract| {
            SchemaSettings::draft2020_12().with(|s| {
                s.definitions_path = "/components/schemas".into();
                s.contract = contract;
            })
        };
        Schemas {
            requests: settings(Contract::Deserialize).into_generator(),
            answers: settings(Contract::Serialize).into_generator(),
        }
    }

    fn request<T: JsonSchema>(&mut self) -> Value {
        self.requests.subschema_for::<T>().to_value()
    }

    fn answer<T: JsonSchema>(&mut self) -> Value {
        self.answers.subschema_for::<T>().to_value()
    }

    /// Every named schema the generators produced. A type described differently as a request
    /// and as an answer would need two names: refused (the unit tests build the document).
    fn definitions(mut self) -> Map<String, Value> {
        let mut out = self.requests.take_definitions(true);
        for (name, schema) in self.answers.take_definitions(true) {
            if let Some(other) = out.get(&name) {
                assert_eq!(
                    other, &schema,
                    "schema {name} differs as a request and as an answer"
                );
            }
            out.insert(name, schema);
        }
        out
    }
}

/// The API style of a path: its tag and the name prefix of its error responses.
fn style(template: &str) -> (&'static str, &'static str) {
    if template.starts_with("/openai/") {
        ("openai", "OpenAI")
    } else if template.starts_with("/anthropic/") {
        ("anthropic", "Anthropic")
    } else if template.starts_with("/api/") {
        ("native", "Native")
    } else {
        ("meta", "Native")
    }
}

/// The error statuses every API style documents: (status, description, extra header).
const ERRORS: [(u16, &str, Option<&str>); 13] = [
    (400, "Client mistake: malformed JSON, missing or invalid field, unknown field, unknown backend, bad `workdir`, disallowed `extra` flag.", None),
    (401, "An API key is required and none (or a wrong one) was sent.", Some("WWW-Authenticate")),
    (403, "Refused by policy: a web page of another origin (`origin_not_allowed`), or a request that would loosen the configured approval/sandbox mode (`escalation_not_allowed`).", None),
    (404, "Not found (unknown session id or ambiguous prefix, unknown model, unknown route).", None),
    (409, "The session cannot be resumed (its first turn did not start a backend session).", None),
    (413, "The body is larger than `server.max_request_body_bytes` (default 10 MiB).", None),
    (415, "A body that is not `Content-Type: application/json` (`unsupported_media_type`).", None),
    (421, "A `Host` header the server does not answer for (`misdirected_request`, DNS-rebinding defence; see `server.allowed_hosts`).", None),
    (429, "Rate limited (`server.rate_limit_*`) or too many failed keys from one address; see `Retry-After`.", Some("Retry-After")),
    (500, "Internal error (e.g. the session store cannot write); the answer names the request id.", None),
    (502, "The CLI ran and failed.", None),
    (503, "Backend not installed or disabled, no capacity (`Retry-After`), or the daemon is shutting down.", Some("Retry-After")),
    (504, "The CLI timed out (`server.request_timeout_secs`); its process group was killed.", None),
];

/// `components.schemas.ErrorCode`: every machine code an error answer can carry, from the one
/// list in `error.rs`, each with what it means.
fn error_codes() -> Value {
    let codes = crate::error::Code::ALL;
    let meanings: Map<String, Value> = codes
        .iter()
        .map(|c| (c.as_str().to_string(), json!(c.meaning())))
        .collect();
    json!({
        "type": "string",
        "description": "The machine code of an error (the same in every API style).",
        "enum": codes.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
        "x-enum-descriptions": meanings,
    })
}

/// `components.responses`: each style's error responses (`Native400`, `OpenAI502`, …).
fn error_responses() -> Map<String, Value> {
    let mut out = Map::new();
    for style in ["Native", "OpenAI", "Anthropic"] {
        for (code, description, header) in ERRORS {
            let mut headers =
                json!({"X-Request-Id": {"$ref": "#/components/headers/X-Request-Id"}});
            if let Some(h) = header {
                headers[h] = json!({ "$ref": format!("#/components/headers/{h}") });
            }
            out.insert(
                format!("{style}{code}"),
                json!({
                    "description": description,
                    "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{style}Error")}}},
                    "headers": headers,
                }),
            );
        }
    }
    out
}

/// One operation's documentation.
struct OpDoc {
    id: &'static str,
    summary: &'static str,
    description: Option<&'static str>,
    /// The JSON body's schema.
    body: Option<Value>,
    /// The success answer: (description, `content`).
    ok: (&'static str, Value),
    parameters: Vec<Value>,
    /// Statuses this operation answers beyond the guards' (see `guard_errors`).
    errors: &'static [u16],
    /// Non-success answers of its own (e.g. `/health`'s 503).
    own: Vec<(u16, Value)>,
}

fn json_body(schema: Value) -> Value {
    json!({ "application/json": { "schema": schema } })
}

fn text_body(content_type: &str, example: Option<&str>) -> Value {
    let mut c = json!({ "schema": { "type": "string" } });
    if let Some(e) = example {
        c["example"] = e.into();
    }
    json!({ content_type: c })
}

fn param_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/parameters/{name}") })
}

/// The query parameters of a typed query (one per property of its schema).
fn query_params(schema: &Value) -> Vec<Value> {
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return Vec::new();
    };
    props
        .iter()
        .map(|(name, s)| {
            let mut p = json!({ "name": name, "in": "query", "required": false, "schema": s });
            if let Some(d) = s.get("description") {
                p["description"] = d.clone();
            }
            p
        })
        .collect()
}

/// The documentation of each operation.
fn describe(op: Op, s: &mut Schemas) -> OpDoc {
    let doc = |id, summary, ok| OpDoc {
        id,
        summary,
        description: None,
        body: None,
        ok,
        parameters: Vec::new(),
        errors: &[],
        own: Vec::new(),
    };
    let native_error = |description: &str| {
        json!({
            "description": description,
            "content": json_body(json!({"$ref": "#/components/schemas/NativeError"})),
        })
    };
    match op {
        Op::Health => {
            let health = s.answer::<super::meta::Health>();
            OpDoc {
                own: vec![(
                    503,
                    json!({
                        "description": "Shutting down (`status: unhealthy`).",
                        "content": json_body(health.clone()),
                    }),
                )],
                ..doc(
                    "health",
                    "Health and version",
                    ("Serving. Without a key while auth is on, only `status`.", json_body(health)),
                )
            }
        }
        Op::Metrics => OpDoc {
            description: Some("Prometheus text format, when `server.metrics_enabled`. Series include `clinvk_requests_total{method,path,status}` and `clinvk_request_duration_seconds{method,path}` (path = the route template, e.g. `/api/v1/sessions/{id}`), `clinvk_backend_executions_total{backend,status}`, `clinvk_backend_execution_duration_seconds{backend}`, `clinvk_time_to_first_output_seconds{backend}`, `clinvk_active_sessions`, `clinvk_sessions_created_total`, `clinvk_usage_store_errors_total` (usage store failures: the runs went on unrecorded), `clinvk_session_store_errors_total{op}` (session writes that failed while a run went on; `op`: status, backend_session_id, turn, delete, claim, transcript_hash). A key is required when auth is on and `server.metrics_require_auth` is set (the default)."),
            own: vec![(404, native_error("Metrics are disabled (`code: metrics_disabled`)."))],
            ..doc(
                "metrics",
                "Prometheus metrics",
                (
                    "The metrics.",
                    text_body(
                        "text/plain",
                        Some("clinvk_requests_total{method=\"GET\",path=\"/api/v1/sessions/{id}\",status=\"404\"} 1\n"),
                    ),
                ),
            )
        },
        Op::OpenApi => doc(
            "openapi",
            "This OpenAPI document",
            (
                "OpenAPI 3.1 document; `info.version` is the daemon's version.",
                json_body(json!({"type": "object"})),
            ),
        ),
        Op::Docs => doc(
            "docs",
            "API documentation page (works offline)",
            (
                "An HTML page rendering /openapi.json with the daemon's own assets.",
                text_body("text/html", None),
            ),
        ),
        Op::DocsAsset => OpDoc {
            parameters: vec![json!({"name": "asset", "in": "path", "required": true, "schema": {"type": "string", "enum": ["app.js", "style.css"]}})],
            own: vec![(404, native_error("No such asset."))],
            ..doc(
                "docsAsset",
                "An asset of the documentation page",
                (
                    "The asset.",
                    json!({"text/javascript": {"schema": {"type": "string"}}, "text/css": {"schema": {"type": "string"}}}),
                ),
            )
        },
        Op::Prompt => {
            let mut content = json_body(json!({"oneOf": [s.answer::<api::PromptResult>(), s.answer::<api::DryRun>()]}));
            content["application/x-ndjson"] = json!({
                "schema": s.answer::<super::native::StreamLine>(),
                "x-stream": "One `StreamLine` JSON object per line, written as the CLI produces it; `done` is the last line (after an `error` line when the run failed).",
            });
            OpDoc {
                description: Some("Runs one prompt on one backend, in a new clinvk session or continuing `session_id`. The session is written before the CLI starts. A run that started and failed is a 200 with `exit_code` and `error` set. With `output_format: \"stream-json\"` the answer is NDJSON events, written as the CLI produces them. With `dry_run` the answer is the exact argv, nothing is started. Unknown fields are refused (400 naming them)."),
                body: Some(s.request::<api::PromptRequest>()),
                errors: &[404, 409, 500, 503],
                ..doc(
                    "prompt",
                    "Run one prompt",
                    ("The result (or, with `dry_run`, the argv; with `stream-json`, the event stream).", content),
                )
            }
        }
        Op::Parallel => OpDoc {
            description: Some("A task that cannot start or fails is reported in its result, not as an HTTP error; client mistakes in any task are refused (400) before anything runs."),
            body: Some(s.request::<api::ParallelRequest>()),
            errors: &[404, 503],
            ..doc("parallel", "Run many prompts concurrently", ("All results, in the tasks' order.", json_body(s.answer::<api::ParallelResult>())))
        },
        Op::Chain => OpDoc {
            description: Some("Each step may use `{{previous}}`, the previous step's output."),
            body: Some(s.request::<api::ChainRequest>()),
            errors: &[404, 503],
            ..doc("chain", "Run prompts in sequence", ("The steps' results.", json_body(s.answer::<api::ChainResult>())))
        },
        Op::Compare => OpDoc {
            body: Some(s.request::<api::CompareRequest>()),
            errors: &[503],
            ..doc("compare", "Run one prompt on several backends", ("One result per backend.", json_body(s.answer::<api::CompareResult>())))
        },
        Op::Backends => doc(
            "listBackends",
            "List backends and whether each is usable",
            ("The backends.", json_body(s.answer::<api::BackendList>())),
        ),
        Op::Accounts => OpDoc {
            description: Some("Each backend's accounts (`backends.<b>.accounts` and the folders under `<state>/accounts/<backend>/`; a backend with none lists `default`, the CLI's own login) with their login state (never a token) and the quota windows its CLI last reported — claude's `five_hour` and `seven_day` under a subscription login — each with utilization 0–1, reset time and status. Kept across a restart until every window has reset. A run refused for a spent window is answered 429 `usage_limit_reached` with `Retry-After`."),
            ..doc(
                "listAccounts",
                "List accounts and their quota windows",
                ("The accounts.", json_body(s.answer::<clinvk_shared::quota::AccountList>())),
            )
        },
        Op::SessionsList => {
            let query = s.request::<api::ListQuery>();
            let query = resolve(&s.requests, &query);
            OpDoc {
                description: Some("Newest `last_used` first. A key holder sees only the sessions its key created."),
                parameters: query_params(&query),
                errors: &[400],
                ..doc("listSessions", "List sessions", ("A page of sessions.", json_body(s.answer::<api::SessionPage>())))
            }
        }
        Op::SessionGet => OpDoc {
            parameters: vec![param_ref("SessionId")],
            errors: &[400, 404],
            ..doc("getSession", "Show one session", ("The session with its turns.", json_body(s.answer::<api::SessionDetail>())))
        },
        Op::SessionDelete => OpDoc {
            parameters: vec![param_ref("SessionId")],
            errors: &[400, 404],
            ..doc("deleteSession", "Delete a session", ("Deleted.", json_body(s.answer::<api::SessionDeleted>())))
        },
        Op::OpenAiModels => doc(
            "openaiListModels",
            "Backends and model aliases as OpenAI models",
            ("The models.", json_body(json!({"$ref": "#/components/schemas/OpenAIModelList"}))),
        ),
        Op::OpenAiModel => OpDoc {
            parameters: vec![param_ref("ModelId")],
            errors: &[404],
            ..doc("openaiGetModel", "One model", ("The model.", json_body(json!({"$ref": "#/components/schemas/OpenAIModel"}))))
        },
        Op::OpenAiChat => OpDoc {
            description: Some("The whole conversation is given to the CLI (system messages through the backend's system-prompt flag). When the history continues a conversation this server already holds, the backend's session is resumed and only the new turn is sent. A CLI failure is an error (502/504), never a reply."),
            parameters: vec![param_ref("ClinvkSession")],
            body: Some(json!({"$ref": "#/components/schemas/ChatCompletionRequest"})),
            errors: &[404, 502, 503, 504],
            ..doc(
                "openaiChatCompletions",
                "OpenAI chat completions",
                (
                    "The completion, or with `stream: true` an SSE stream of `data: {chunk}` frames ending with `data: [DONE]`.",
                    json!({
                        "application/json": {"schema": {"$ref": "#/components/schemas/ChatCompletion"}},
                        "text/event-stream": {
                            "schema": sse_event(),
                            "x-stream-item": {"$ref": "#/components/schemas/ChatCompletionChunk"},
                            "example": "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"claude\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\ndata: [DONE]\n\n",
                        },
                    }),
                ),
            )
        },
        Op::OpenAiResponses => OpDoc {
            description: Some("The OpenAI Responses API. `input` is a string or a list of items (messages with `input_text`/`output_text` parts, earlier `function_call`/`function_call_output` items as text); `instructions` is the system prompt; `previous_response_id` continues the clinvk session of a stored response (unknown id: 404). With `store` (default true) the response can be retrieved and continued. With `stream: true` the answer is the typed event sequence `response.created`, `response.in_progress`, `response.output_item.added`, `response.content_part.added`, `response.output_text.delta`…, `response.output_text.done`, `response.content_part.done`, `response.output_item.done`, `response.completed` (or `response.failed`), each with a `sequence_number`. `tools`, structured output (`text.format` other than `text`), `background`, `conversation` and `prompt` are refused (400 naming them); fields the CLIs cannot enforce (`temperature`, `max_output_tokens`…) are named in `X-Clinvk-Ignored-Params`."),
            parameters: vec![param_ref("ClinvkSession")],
            body: Some(json!({"$ref": "#/components/schemas/ResponsesRequest"})),
            errors: &[404, 409, 502, 503, 504],
            ..doc(
                "openaiCreateResponse",
                "OpenAI Responses: create",
                (
                    "The response, or with `stream: true` its SSE event sequence.",
                    json!({
                        "application/json": {"schema": {"$ref": "#/components/schemas/ResponseObject"}},
                        "text/event-stream": {
                            "schema": sse_event(),
                            "x-stream-item": {"$ref": "#/components/schemas/ResponseStreamEvent"},
                            "example": "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"sequence_number\":4,\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"delta\":\"Hi\"}\n\n",
                        },
                    }),
                ),
            )
        },
        Op::OpenAiResponseGet => OpDoc {
            parameters: vec![param_ref("ResponseId")],
            errors: &[404],
            ..doc("openaiGetResponse", "OpenAI Responses: retrieve a stored response", ("The response.", json_body(json!({"$ref": "#/components/schemas/ResponseObject"}))))
        },
        Op::OpenAiResponseDelete => OpDoc {
            parameters: vec![param_ref("ResponseId")],
            errors: &[404],
            ..doc(
                "openaiDeleteResponse",
                "OpenAI Responses: delete a stored response",
                ("Deleted.", json_body(json!({"type": "object", "required": ["id", "object", "deleted"], "properties": {"id": {"type": "string"}, "object": {"const": "response.deleted"}, "deleted": {"const": true}}}))),
            )
        },
        Op::AnthropicMessages => OpDoc {
            description: Some("As for chat completions: the conversation goes to the CLI, a known conversation resumes its backend session, a CLI failure is an error."),
            parameters: vec![param_ref("ClinvkSession")],
            body: Some(json!({"$ref": "#/components/schemas/AnthropicMessagesRequest"})),
            errors: &[404, 502, 503, 504],
            ..doc(
                "anthropicMessages",
                "Anthropic messages",
                (
                    "The message, or with `stream: true` an SSE stream of `event:`/`data:` frames.",
                    json!({
                        "application/json": {"schema": {"$ref": "#/components/schemas/AnthropicMessage"}},
                        "text/event-stream": {
                            "schema": sse_event(),
                            "x-stream-item": {"$ref": "#/components/schemas/AnthropicStreamEvent"},
                            "example": "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{…}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
                        },
                    }),
                ),
            )
        },
        Op::AnthropicCountTokens => OpDoc {
            description: Some("An estimate: a quarter of the characters of the system prompt, the messages and the tool definitions, rounded up (the CLIs expose no tokenizer); the `X-Clinvk-Token-Count-Method` header says so. Also served at `/anthropic/v1/v1/messages/count_tokens`, like every Anthropic path (SDKs given the base URL `…/anthropic/v1` append `/v1/…`)."),
            body: Some(json!({"type": "object", "required": ["model", "messages"], "properties": {"model": {"type": "string"}, "messages": {"type": "array", "items": {"$ref": "#/components/schemas/AnthropicMessageParam"}}, "system": {}, "tools": {"type": "array"}}})),
            errors: &[404],
            ..doc(
                "anthropicCountTokens",
                "Count the input tokens of a messages request (estimate)",
                ("The count.", json_body(json!({"type": "object", "required": ["input_tokens"], "properties": {"input_tokens": {"type": "integer", "minimum": 0}}}))),
            )
        },
        Op::AnthropicModels => doc(
            "anthropicListModels",
            "Backends and model aliases as Anthropic models",
            ("The models.", json_body(json!({"$ref": "#/components/schemas/AnthropicModelList"}))),
        ),
        Op::AnthropicModel => OpDoc {
            parameters: vec![param_ref("ModelId")],
            errors: &[404],
            ..doc("anthropicGetModel", "One model", ("The model.", json_body(json!({"$ref": "#/components/schemas/AnthropicModel"}))))
        },
        Op::Ui => doc(
            "dashboard",
            "The operator's dashboard (works offline; asks for a key when auth is on)",
            ("An HTML page using this API with the daemon's own assets.", text_body("text/html", None)),
        ),
        Op::UiAsset => OpDoc {
            parameters: vec![json!({"name": "asset", "in": "path", "required": true, "schema": {"type": "string", "enum": ["app.js", "style.css"]}})],
            own: vec![(404, native_error("No such asset."))],
            ..doc(
                "dashboardAsset",
                "An asset of the dashboard",
                (
                    "The asset.",
                    json!({"text/javascript": {"schema": {"type": "string"}}, "text/css": {"schema": {"type": "string"}}}),
                ),
            )
        },
        Op::Usage => {
            let query = s.request::<api::UsageQuery>();
            let query = resolve(&s.requests, &query);
            OpDoc {
                description: Some("One row per run is kept in the usage store; this sums the runs started since `since` (default `7d`), grouped by `by` (default `day`, UTC). Cost is claude's own figure where it reports one, otherwise tokens × the `pricing:` table: an estimate. A key without the `admin` scope sees only its own runs."),
                parameters: query_params(&query),
                errors: &[400],
                ..doc("usage", "Usage and cost, grouped", ("The report.", json_body(s.answer::<api::UsageReport>())))
            }
        }
        Op::Live => {
            let snapshot = s.answer::<api::LiveSnapshot>();
            OpDoc {
                description: Some("The running prompts (a key without the `admin` scope sees only its own) and the warm workers. With `Accept: text/event-stream` the answer is a stream of server-sent events that stays open: an `event: live` frame whose `data:` is a `LiveSnapshot` at once, then at every change (and every few seconds); otherwise the snapshot once, as JSON."),
                ..doc(
                    "live",
                    "What runs now (JSON, or server-sent events)",
                    (
                        "The snapshot, or with `Accept: text/event-stream` the event stream.",
                        json!({
                            "application/json": {"schema": snapshot.clone()},
                            "text/event-stream": {"schema": sse_event(), "x-stream-item": snapshot},
                        }),
                    ),
                )
            }
        }
        Op::RunCancel => OpDoc {
            description: Some("Cancels a running prompt (its CLI's process group is killed); its client gets the run's end with `error: cancelled`. An `admin` key may cancel any run, another key only its own."),
            parameters: vec![json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string"}, "description": "The run's id, from `/api/v1/live`."})],
            body: Some(s.request::<api::RunCancelRequest>()),
            errors: &[404],
            ..doc("cancelRun", "Cancel a running prompt", ("Cancelled.", json_body(s.answer::<api::RunCancelled>())))
        },
        Op::KeysList => doc(
            "listKeys",
            "List the stored API keys with their scopes, quotas and use today (admin)",
            ("The keys (never the keys themselves).", json_body(s.answer::<api::KeyList>())),
        ),
        Op::KeysAdd => OpDoc {
            body: Some(s.request::<api::KeyAddRequest>()),
            errors: &[500],
            ..doc("addKey", "Create an API key (admin); the key is in this answer only", ("The new key.", json_body(s.answer::<api::NewKey>())))
        },
        Op::KeysRevoke => OpDoc {
            parameters: vec![json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string"}, "description": "The key's id or name."})],
            errors: &[404, 500],
            ..doc("revokeKey", "Revoke an API key (admin)", ("Revoked.", json_body(s.answer::<api::KeyRevoked>())))
        },
    }
}

/// A `$ref` to a generated schema, followed (for query parameters, which cannot be a `$ref`).
fn resolve(generator: &SchemaGenerator, schema: &Value) -> Value {
    let name = schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.rsplit('/').next());
    match name.and_then(|n| generator.definitions().get(n)) {
        Some(s) => s.clone(),
        None => schema.clone(),
    }
}

/// The statuses the guards answer before a route's handler (`http::admit`, in its order):
/// every route can be refused for its `Host` (421) or `Origin` (403), while the daemon drains
/// (503, all but `/health`), for too many failed key checks from the client's address and for
/// the rate limit (429: a key sent to a public route is checked too); a route that may need a
/// key for the key (401) and its scope (403); a body for its size, type and JSON (413, 415, 400).
fn guard_errors(method: &Method, template: &str, access: Access) -> Vec<u16> {
    let mut codes = vec![403, 421, 429];
    if template != "/health" {
        codes.push(503);
    }
    match access {
        Access::Public => {}
        Access::Metrics | Access::Read | Access::Key | Access::Admin => codes.push(401),
    }
    if method == Method::POST {
        codes.extend([400, 413, 415]);
    }
    codes
}

/// The whole document.
fn build() -> Value {
    let mut doc: Value = serde_json::from_str(BASE).expect("openapi-base.json is valid JSON");
    doc["info"]["version"] = clinvk_shared::VERSION.into();
    let mut schemas = Schemas::new();
    let mut paths = Map::new();
    for route in &ROUTES {
        let template = route.template.replace("*}", "}");
        let (tag, style_name) = style(&template);
        let d = describe(route.op, &mut schemas);
        let request_id = json!({"X-Request-Id": {"$ref": "#/components/headers/X-Request-Id"}});
        let mut responses = Map::new();
        responses.insert(
            "200".into(),
            json!({"description": d.ok.0, "content": d.ok.1, "headers": request_id}),
        );
        let mut codes = guard_errors(&route.method, &template, route.access);
        codes.extend(d.errors);
        codes.sort_unstable();
        codes.dedup();
        for code in codes {
            responses.insert(
                code.to_string(),
                json!({"$ref": format!("#/components/responses/{style_name}{code}")}),
            );
        }
        for (code, mut resp) in d.own {
            resp["headers"] = request_id.clone();
            responses.insert(code.to_string(), resp);
        }
        let mut op = json!({
            "tags": [tag],
            "operationId": d.id,
            "summary": d.summary,
            "responses": responses,
        });
        if let Some(text) = d.description {
            op["description"] = text.into();
        }
        if !d.parameters.is_empty() {
            op["parameters"] = d.parameters.into();
        }
        if let Some(body) = d.body {
            op["requestBody"] = json!({"required": true, "content": json_body(body)});
        }
        if route.access == Access::Public {
            op["security"] = json!([{}]);
        }
        let item = paths
            .entry(template)
            .or_insert_with(|| Value::Object(Map::new()));
        item[route.method.as_str().to_ascii_lowercase()] = op;
    }
    doc["paths"] = Value::Object(paths);
    doc["components"]["responses"] = Value::Object(error_responses());
    let generated = schemas.definitions();
    let all = doc["components"]["schemas"]
        .as_object_mut()
        .expect("openapi-base.json has components.schemas");
    all.insert("ErrorCode".into(), error_codes());
    for (name, schema) in generated {
        assert!(
            !all.contains_key(&name),
            "schema {name} is both generated and written in openapi-base.json"
        );
        all.insert(name, schema);
    }
    doc
}

fn text(body: &'static str, content_type: &'static str, csp: bool) -> Response {
    let mut resp = Response::new(body.into());
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert("content-type", HeaderValue::from_static(content_type));
    h.insert("cache-control", HeaderValue::from_static("no-cache"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    if csp {
        h.insert("content-security-policy", HeaderValue::from_static(CSP));
    }
    resp
}

/// `GET /openapi.json`.
pub(crate) fn spec() -> Response {
    text(document(), "application/json", false)
}

/// `GET /docs`.
pub(crate) fn docs_page() -> Response {
    text(INDEX_HTML, "text/html; charset=utf-8", true)
}

/// `GET /docs/{asset}`: the page's script and style sheet; anything else is 404.
pub(crate) fn asset(name: &str) -> Result<Response, ApiError> {
    match name {
        "app.js" => Ok(text(APP_JS, "text/javascript; charset=utf-8", true)),
        "style.css" => Ok(text(STYLE_CSS, "text/css; charset=utf-8", true)),
        _ => Err(ApiError::new(
            Kind::NotFound,
            Code::NotFound,
            format!("no docs asset {name:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn doc() -> Value {
        serde_json::from_str(document()).expect("openapi.json is valid JSON")
    }

    #[test]
    fn is_openapi_31_with_the_build_version() {
        let d = doc();
        assert_eq!(d["openapi"], "3.1.0");
        assert_eq!(d["info"]["version"], clinvk_shared::VERSION);
        let schemes = &d["components"]["securitySchemes"];
        assert_eq!(schemes["bearerAuth"]["scheme"], "bearer");
        assert_eq!(schemes["apiKeyHeader"]["name"], "X-Api-Key");
        // Keys are optional: the empty requirement is one of the alternatives.
        assert!(d["security"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s.as_object().is_some_and(|o| o.is_empty())));
    }

    /// The native schemas come from the Rust types: a field added to a request or an answer is
    /// in the document without anyone writing it there.
    #[test]
    fn native_schemas_are_generated_from_the_types() {
        let d = doc();
        let schemas = &d["components"]["schemas"];
        let req = &schemas["PromptRequest"];
        // Every field of the type, and unknown fields refused, as the daemon reads it.
        let fields = serde_json::to_value(api::PromptRequest::default()).unwrap();
        for name in fields.as_object().unwrap().keys() {
            assert!(req["properties"][name].is_object(), "PromptRequest.{name}");
        }
        assert_eq!(req["additionalProperties"], false);
        assert!(req
            .get("required")
            .is_none_or(|r| r.as_array().unwrap().is_empty()));
        // Answers: what the daemon always writes is required.
        let result = &schemas["PromptResult"];
        for name in ["backend", "exit_code", "output", "error", "token_usage"] {
            assert!(
                result["required"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|r| r == name),
                "PromptResult.{name} required"
            );
        }
        // Enums list their wire names.
        let modes = serde_json::to_string(&schemas["ApprovalMode"]).unwrap();
        for m in ["default", "auto", "none", "always"] {
            assert!(modes.contains(&format!("\"{m}\"")), "{m} in {modes}");
        }
        // The list query's parameters come from `ListQuery`.
        let params = d["paths"]["/api/v1/sessions"]["get"]["parameters"]
            .as_array()
            .unwrap();
        let names: Vec<_> = params.iter().map(|p| p["name"].as_str().unwrap()).collect();
        assert_eq!(names.len(), 4, "{names:?}");
        for n in ["backend", "status", "limit", "offset"] {
            assert!(names.contains(&n), "{names:?}");
        }
        // Foreign formats stay as written.
        assert!(schemas["ChatCompletionRequest"].is_object());
        assert!(schemas["OpenAIError"].is_object());
    }

    /// The route table and the document agree: every route (method and template) is
    /// documented, and every documented operation is a route.
    #[test]
    fn documents_every_route() {
        use super::super::routes::ROUTES;
        let d = doc();
        let paths = d["paths"].as_object().unwrap();
        let doc_template = |t: &str| t.replace("*}", "}");
        for r in &ROUTES {
            let t = doc_template(r.template);
            let method = r.method.as_str().to_ascii_lowercase();
            assert!(
                paths.get(&t).and_then(|p| p.get(&method)).is_some(),
                "{} {} is not in openapi.json",
                r.method,
                r.template
            );
        }
        for (p, item) in paths {
            let methods = ["get", "post", "put", "patch", "delete", "head", "options"];
            for method in item.as_object().unwrap().keys() {
                if !methods.contains(&method.as_str()) {
                    continue; // `parameters`, `summary`: not operations
                }
                assert!(
                    ROUTES.iter().any(|r| doc_template(r.template) == *p
                        && r.method.as_str().eq_ignore_ascii_case(method)),
                    "documented {method} {p} is not a route"
                );
            }
        }
    }

    #[test]
    fn refs_resolve_and_operations_are_complete() {
        let d = doc();
        fn walk(d: &Value, v: &Value) {
            match v {
                Value::Object(o) => {
                    if let Some(Value::String(r)) = o.get("$ref") {
                        let ptr = r.strip_prefix('#').expect("local $ref");
                        assert!(d.pointer(ptr).is_some(), "dangling $ref {r}");
                    }
                    o.values().for_each(|v| walk(d, v));
                }
                Value::Array(a) => a.iter().for_each(|v| walk(d, v)),
                _ => {}
            }
        }
        walk(&d, &d);
        let mut ids = std::collections::HashSet::new();
        for (path, item) in d["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                if method == "parameters" {
                    continue;
                }
                assert!(op["summary"].is_string(), "{method} {path}: summary");
                assert!(op["tags"][0].is_string(), "{method} {path}: tag");
                assert!(
                    ids.insert(op["operationId"].as_str().unwrap().to_string()),
                    "{method} {path}: operationId"
                );
                let responses = op["responses"].as_object().unwrap();
                assert!(
                    responses.keys().any(|s| s.starts_with('2')),
                    "{method} {path}: no success response"
                );
            }
        }
    }

    #[test]
    fn streaming_and_error_responses_are_described() {
        let d = doc();
        let p = &d["paths"];
        let ok = |path: &str| p[path]["post"]["responses"]["200"]["content"].clone();
        assert!(ok("/api/v1/prompt")["application/x-ndjson"].is_object());
        assert!(ok("/openai/v1/chat/completions")["text/event-stream"].is_object());
        assert!(ok("/anthropic/v1/messages")["text/event-stream"].is_object());
        for (path, style) in [
            ("/openai/v1/chat/completions", "OpenAI"),
            ("/anthropic/v1/messages", "Anthropic"),
        ] {
            for code in ["400", "401", "404", "413", "429", "502", "503", "504"] {
                assert_eq!(
                    p[path]["post"]["responses"][code]["$ref"],
                    format!("#/components/responses/{style}{code}"),
                    "{path} {code}"
                );
            }
        }
    }

    #[test]
    fn assets() {
        assert_eq!(
            asset("app.js").unwrap().headers()["content-type"],
            "text/javascript; charset=utf-8"
        );
        assert_eq!(
            asset("style.css").unwrap().headers()["content-type"],
            "text/css; charset=utf-8"
        );
        assert_eq!(asset("nope.js").unwrap_err().kind, Kind::NotFound);
        for body in [INDEX_HTML, APP_JS, STYLE_CSS] {
            assert!(
                !body.contains("http://") && !body.contains("https://"),
                "docs assets must not load anything from elsewhere"
            );
        }
    }
}
