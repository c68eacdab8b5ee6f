//! Bounded property fuzzing (stable Rust, `proptest`): the CLI output parsers, the live-mode
//! protocol drivers (codex app-server, gemini ACP, claude stream-json), the control protocol's
//! frame decoder and the request decoding of the three compatible API styles get arbitrary and
//! near-valid input; none may panic. A case that ever fails is kept as a regression below.

use crate::backend::{self, Invocation};
use clinvk_shared::api::Backend;
use clinvk_shared::config::BackendSettings;
use proptest::prelude::*;
use serde_json::{json, Value};

/// Names the formats use, so that generated objects look like the real thing.
const KEYS: &[&str] = &[
    "type",
    "id",
    "method",
    "params",
    "result",
    "error",
    "message",
    "content",
    "text",
    "role",
    "delta",
    "event",
    "session_id",
    "sessionId",
    "threadId",
    "turnId",
    "turn",
    "thread",
    "item",
    "status",
    "usage",
    "update",
    "sessionUpdate",
    "model",
    "messages",
    "input",
    "system",
    "tools",
    "stream",
    "max_tokens",
    "response_format",
    "text_delta",
    "image_url",
    "url",
    "source",
    "data",
    "media_type",
    "format",
    "schema",
    "json_schema",
    "instructions",
    "previous_response_id",
    "is_error",
    "subtype",
    "stopReason",
    "_meta",
    "tokenUsage",
    "last",
    "options",
    "optionId",
    "kind",
    "n",
    "tool_choice",
    "metadata",
    "store",
    "parts",
    "agentMessage",
    "willRetry",
];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        "[a-z_/ ]{0,12}".prop_map(Value::String),
        prop::sample::select(KEYS).prop_map(|k| Value::String(k.to_string())),
        ".{0,40}".prop_map(Value::String),
    ]
}

/// JSON values of a few levels, objects keyed mostly by the formats' own names.
fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        prop::sample::select(KEYS).prop_map(str::to_string),
                        "[a-z]{1,8}"
                    ],
                    inner
                ),
                0..6
            )
            .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A line a CLI could print: JSON (an object most of the time) or anything at all.
fn line() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => value().prop_map(|v| v.to_string()),
        1 => ".{0,200}",
        1 => prop::collection::vec(any::<u8>(), 0..120)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

/// A chat message as the three styles write one, with fuzzed parts.
fn message() -> impl Strategy<Value = Value> {
    let part = (
        prop::sample::select(&["text", "image_url", "input_text", "input_image", "image", "output_text", "tool_result", "file"][..]),
        ".{0,20}",
        prop_oneof![
            Just(json!("data:image/png;base64,iVBORw0KGgoAAAANSUhEUg==")),
            Just(json!("https://example.com/a.png")),
            Just(json!({"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="})),
            value(),
        ],
    )
        .prop_map(|(t, text, img)| json!({"type": t, "text": text, "image_url": img, "source": img, "url": img}));
    (
        prop::sample::select(
            &[
                "user",
                "assistant",
                "system",
                "developer",
                "tool",
                "function",
                "x",
            ][..],
        ),
        prop_oneof![
            ".{0,30}".prop_map(Value::String),
            prop::collection::vec(part, 0..4).prop_map(Value::Array),
            value()
        ],
    )
        .prop_map(|(role, content)| json!({"role": role, "content": content, "type": "message"}))
}

fn invocation(backend: Backend) -> Invocation {
    Invocation {
        backend,
        prompt: "fuzz".into(),
        workdir: Some("/tmp".into()),
        ..Default::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn one_shot_parsers_take_any_output(lines in prop::collection::vec(line(), 0..12), code in any::<Option<i32>>(), stderr in ".{0,80}") {
        for b in Backend::ALL {
            let mut p = backend::adapter(b).parser();
            for l in &lines {
                p.parse_line(l);
            }
            p.finish(code, &stderr);
        }
    }

    #[test]
    fn live_drivers_take_any_output(lines in prop::collection::vec(line(), 0..12), resume in any::<bool>()) {
        for b in Backend::ALL {
            let mut inv = invocation(b);
            if resume {
                inv.resume = Some("s-1".into());
            }
            let mut d = backend::adapter(b).live(&inv, &BackendSettings::default()).unwrap().driver;
            d.open();
            d.turn(&inv);
            for l in &lines {
                d.on_line(l);
            }
            d.interrupt();
            d.turn(&inv);
        }
    }

    /// Near-valid JSON-RPC: the real message shapes with fuzzed members.
    #[test]
    fn live_drivers_take_mangled_protocol_messages(
        id in prop_oneof![Just(json!(1)), Just(json!(2)), Just(json!(3)), value()],
        method in prop::sample::select(&["item/agentMessage/delta", "turn/completed", "error", "thread/tokenUsage/updated", "item/completed", "item/started", "session/update", "session/request_permission", "item/commandExecution/requestApproval"][..]),
        params in value(),
        result in value(),
    ) {
        for b in Backend::ALL {
            let inv = invocation(b);
            let mut d = backend::adapter(b).live(&inv, &BackendSettings::default()).unwrap().driver;
            d.open();
            d.turn(&inv);
            for msg in [
                json!({"id": id, "result": result}),
                json!({"jsonrpc": "2.0", "id": 1, "result": {"sessionId": "s"}}),
                json!({"id": 2, "result": {"thread": {"id": "t"}}}),
                json!({"id": 3, "result": {"turn": {"id": "u"}}}),
                json!({"method": method, "params": params}),
                json!({"id": id, "method": method, "params": params}),
                json!({"id": id, "error": result}),
            ] {
                d.on_line(&msg.to_string());
            }
        }
    }

    #[test]
    fn compatible_requests_decode_or_refuse(
        body in value(),
        messages in prop_oneof![value(), prop::collection::vec(message(), 0..5).prop_map(Value::Array)],
        model in "[a-z]{0,8}",
    ) {
        let mut shaped = match &body { Value::Object(m) => m.clone(), _ => Default::default() };
        shaped.insert("model".into(), json!(model));
        shaped.insert("messages".into(), messages.clone());
        let shaped = Value::Object(shaped);
        for v in [&body, &shaped] {
            let _ = crate::http::openai::decode(v.clone());
            let _ = crate::http::anthropic::decode(v.clone());
        }
        let mut resp = shaped.as_object().cloned().unwrap_or_default();
        resp.insert("input".into(), messages);
        let _ = crate::http::responses::decode(Value::Object(resp));
        let _ = crate::http::responses::decode(body);
    }

    #[test]
    fn control_frames_decode_or_refuse(bytes in prop::collection::vec(any::<u8>(), 0..300), json in value()) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut framed = (json.to_string().len() as u32).to_be_bytes().to_vec();
        framed.extend_from_slice(json.to_string().as_bytes());
        for input in [bytes.clone(), framed] {
            rt.block_on(async {
                let mut r = &input[..];
                let _ = clinvk_shared::protocol::read_frame::<_, clinvk_shared::protocol::ClientFrame>(&mut r).await;
                let mut r = &input[..];
                let _ = clinvk_shared::protocol::read_frame::<_, clinvk_shared::protocol::ServerFrame>(&mut r).await;
            });
        }
    }
}

/// The decoders the fuzz tests drive accept real requests (so a fuzz run reaches past them).
#[test]
fn decoders_accept_valid_requests() {
    let chat = json!({"model": "claude", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="}}]}]});
    crate::http::openai::decode(chat).unwrap();
    let msg = json!({"model": "claude", "max_tokens": 10, "system": "s", "messages": [{"role": "user", "content": "hi"}]});
    crate::http::anthropic::decode(msg).unwrap();
    let resp = json!({"model": "claude", "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}], "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}}});
    crate::http::responses::decode(resp).unwrap();
    assert!(crate::http::openai::decode(json!({"model": "claude", "messages": []})).is_err());
}
