//! The JSON-RPC plumbing of the live modes that speak it over stdio, one message per line:
//! codex `app-server` (no `jsonrpc` member) and gemini's ACP (`"jsonrpc": "2.0"`). The drivers
//! keep their protocols' own typed params and results; this reads a line into one of the three
//! kinds of message, writes the outgoing ones, and holds what every turn tracks the same way.

use super::{Event, Step};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A JSON-RPC error object.
#[derive(Serialize, Deserialize, Debug, Default)]
pub(crate) struct RpcError {
    #[serde(default)]
    pub(crate) code: i64,
    #[serde(default)]
    pub(crate) message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) data: Option<Value>,
}

/// One line from the CLI.
#[derive(Debug)]
pub(crate) enum Message {
    /// The CLI asks the client (an approval, a permission): it waits for the answer.
    Request {
        id: Value,
        method: String,
        params: Value,
    },
    /// The answer to one of the driver's requests (their ids are numbers).
    Response {
        id: u64,
        result: Result<Value, RpcError>,
    },
    Notification {
        method: String,
        params: Value,
    },
}

#[derive(Deserialize)]
struct Incoming {
    id: Option<Value>,
    method: Option<String>,
    #[serde(default)]
    params: Value,
    result: Option<Value>,
    error: Option<RpcError>,
}

/// Reads one line: a message, nothing (a blank line, an answer to no request of ours), or the
/// events of a line that is not JSON-RPC (kept as `Unparsed`, never dropped).
pub(crate) fn parse(line: &str) -> Result<Option<Message>, Vec<Event>> {
    let trimmed = line.trim();
    if trimmed.is_empty() {
        return Ok(None);
    }
    let m: Incoming = serde_json::from_str(trimmed).map_err(|_| {
        vec![Event::Unparsed {
            line: line.to_string(),
        }]
    })?;
    Ok(match (m.id, m.method) {
        (Some(id), Some(method)) => Some(Message::Request {
            id,
            method,
            params: m.params,
        }),
        (Some(id), None) => id.as_u64().map(|id| Message::Response {
            id,
            result: match m.error {
                Some(e) => Err(e),
                None => Ok(m.result.unwrap_or(Value::Null)),
            },
        }),
        (None, Some(method)) => Some(Message::Notification {
            method,
            params: m.params,
        }),
        (None, None) => None,
    })
}

#[derive(Serialize)]
struct Envelope<'a, P: Serialize, R: Serialize> {
    #[serde(skip_serializing_if = "Option::is_none")]
    jsonrpc: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    params: Option<P>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<R>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<RpcError>,
}

/// How a protocol writes its messages.
#[derive(Clone, Copy)]
pub(crate) struct Dialect {
    /// The `jsonrpc` member (`Some("2.0")`), or none at all (codex).
    pub(crate) jsonrpc: Option<&'static str>,
}

impl Dialect {
    fn line<P: Serialize, R: Serialize>(&self, e: Envelope<'_, P, R>) -> String {
        serde_json::to_string(&Envelope {
            jsonrpc: self.jsonrpc,
            ..e
        })
        .unwrap_or_default()
    }

    pub(crate) fn request<P: Serialize>(&self, id: u64, method: &str, params: P) -> String {
        self.line::<P, ()>(Envelope {
            jsonrpc: None,
            id: Some(id.into()),
            method: Some(method),
            params: Some(params),
            result: None,
            error: None,
        })
    }

    /// A notification; `params: None` writes none.
    pub(crate) fn notify<P: Serialize>(&self, method: &str, params: Option<P>) -> String {
        self.line::<P, ()>(Envelope {
            jsonrpc: None,
            id: None,
            method: Some(method),
            params,
            result: None,
            error: None,
        })
    }

    /// The answer to a request of the CLI.
    pub(crate) fn reply<R: Serialize>(&self, id: Value, result: R) -> String {
        self.line::<(), R>(Envelope {
            jsonrpc: None,
            id: Some(id),
            method: None,
            params: None,
            result: Some(result),
            error: None,
        })
    }

    /// Refuses a request clinvk does not handle (method not found).
    pub(crate) fn refuse(&self, id: Value, method: &str) -> String {
        self.line::<(), ()>(Envelope {
            jsonrpc: None,
            id: Some(id),
            method: None,
            params: None,
            result: None,
            error: Some(RpcError {
                code: -32601,
                message: format!("clinvk does not handle {method}"),
                data: None,
            }),
        })
    }
}

/// What every turn of a JSON-RPC live mode tracks: the session id still to announce to it, and
/// whether it already reported its (first, and only reported) failure.
#[derive(Default)]
pub(crate) struct TurnMarks {
    announce: bool,
    failed: bool,
}

impl TurnMarks {
    /// A new turn: its session is to be announced, it has not failed.
    pub(crate) fn begin(&mut self) {
        *self = TurnMarks {
            announce: true,
            failed: false,
        };
    }

    /// Reports the turn's failure, once.
    pub(crate) fn fail(&mut self, out: &mut Step, message: String) {
        if !self.failed {
            self.failed = true;
            out.events.push(Event::Error { message });
        }
    }

    /// Announces the session to the turn, once it is known.
    pub(crate) fn announce(&mut self, out: &mut Step, session: Option<&str>, model: Option<&str>) {
        if let (true, Some(s)) = (self.announce, session) {
            self.announce = false;
            out.events.push(Event::SessionStarted {
                session_id: s.to_string(),
                model: model.map(str::to_string),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_in_and_out() {
        assert!(matches!(parse("  "), Ok(None)));
        assert_eq!(
            parse("not json").unwrap_err(),
            vec![Event::Unparsed {
                line: "not json".into()
            }]
        );
        assert!(
            matches!(parse(r#"{"id":3,"error":{"code":-1,"message":"no"}}"#),
            Ok(Some(Message::Response { id: 3, result: Err(e) })) if e.message == "no")
        );
        assert!(matches!(parse(r#"{"id":"x","method":"ask","params":{}}"#),
            Ok(Some(Message::Request { method, .. })) if method == "ask"));
        let codex = Dialect { jsonrpc: None };
        assert_eq!(
            codex.notify::<()>("initialized", None),
            r#"{"method":"initialized"}"#
        );
        let acp = Dialect {
            jsonrpc: Some("2.0"),
        };
        assert_eq!(
            acp.refuse(Value::from(9), "fs/x"),
            r#"{"jsonrpc":"2.0","id":9,"error":{"code":-32601,"message":"clinvk does not handle fs/x"}}"#
        );
    }
}
