//! Client tool calls. The functions an OpenAI or Anthropic request brings (`tools`) are offered
//! to the CLI's model through an MCP server (streamable HTTP) that the daemon hosts on a loopback
//! port of its own, one endpoint per conversation behind an unguessable token. When the model
//! calls one, the CLI's `tools/call` waits here; the run hands the call to the front end, which
//! ends its HTTP answer with it and *parks* the run (the CLI process stays alive, waiting). The
//! client's next request carries the result; it is matched by call id, the waiting `tools/call`
//! is answered and the continuation streams as that request's answer.
//!
//! Owns: the MCP listener, the endpoints (token → the tools and the run that listens), the
//! parked runs (call id → run) and their expiry (`tools.pending_timeout_secs`).

use crate::ops::prompt::PromptRun;
use bytes::Bytes;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use warp::http::StatusCode;
use warp::reply::Response;

/// The MCP server's name: claude shows the tools as `mcp__clinvk__<name>`.
pub(crate) const SERVER_NAME: &str = "clinvk";
/// The prefix of the call ids this daemon hands out (a result for such an id that is not
/// pending here is an error, not a foreign conversation to render as text).
pub(crate) const CALL_PREFIX: &str = "call_ck";
/// How many expired call ids are remembered (for a clear 409 to a late result).
const EXPIRED_KEPT: usize = 4096;

/// One function a client offers.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ClientTool {
    /// The name the CLI's model sees (unique in the request).
    pub(crate) name: String,
    pub(crate) description: String,
    /// JSON Schema of the arguments (an object schema).
    pub(crate) parameters: Value,
    /// A function of a Responses `namespace` tool: its namespace and own name (`name` is then
    /// `<namespace>__<own name>`).
    pub(crate) namespace: Option<String>,
    pub(crate) client_name: Option<String>,
}

/// The client tools of one run, as `engine` and the argv builders see them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ClientTools {
    pub(crate) tools: Vec<ClientTool>,
    /// Keep the CLI's own built-in tools too (`tools.builtin`).
    pub(crate) builtin: bool,
    /// What the endpoint is stable for: the clinvk session (so a warm worker of the session
    /// keeps its MCP server across turns), or a random id for a run without one.
    pub(crate) scope: String,
    /// The MCP endpoint URL (with its token); set by `engine` when the run starts.
    pub(crate) url: Option<String>,
    /// How long the CLI should let one call wait (past `tools.pending_timeout_secs`).
    pub(crate) call_timeout_secs: u64,
}

impl ClientTools {
    /// Whether a name the CLI reports for a tool it called is one of these client tools
    /// (claude: `mcp__clinvk__name`, codex: `clinvk.name`, gemini: `mcp_clinvk_name`, copilot:
    /// `clinvk-name`).
    pub(crate) fn is_client_tool(&self, reported: &str) -> bool {
        self.tools.iter().any(|t| {
            reported == t.name
                || reported
                    .strip_suffix(t.name.as_str())
                    .is_some_and(|p| p.ends_with(['_', '.', '/', '-']))
                    && reported.contains(SERVER_NAME)
        })
    }
}

/// Whether `backend` can take client tools as configured now (its adapter declares where); the
/// error says what to do instead.
pub(crate) fn check_support(
    ctx: &crate::ctx::Ctx,
    backend: clinvk_shared::api::Backend,
) -> Result<(), String> {
    use crate::backend::{adapters, ToolSupport};
    match ctx.adapter(backend).capabilities().client_tools {
        ToolSupport::Always => Ok(()),
        ToolSupport::WarmOnly
            if ctx.settings().backend(backend).mode == clinvk_shared::config::BackendMode::Warm =>
        {
            Ok(())
        }
        ToolSupport::WarmOnly => {
            let others: Vec<&str> = adapters()
                .filter(|a| a.capabilities().client_tools == ToolSupport::Always)
                .map(|a| a.backend().as_str())
                .collect();
            Err(format!(
                "{backend} takes client tools in warm mode only (backends.{backend}.mode: warm); send the request to {}, or without tools",
                others.join(" or ")
            ))
        }
    }
}

/// The model called a client tool: the CLI's `tools/call`, waiting for its answer.
#[derive(Debug)]
pub(crate) struct McpCall {
    pub(crate) name: String,
    pub(crate) arguments: Map<String, Value>,
    reply: oneshot::Sender<ToolReply>,
}

/// The client's result of a tool call.
#[derive(Debug, Clone)]
pub(crate) struct ToolReply {
    pub(crate) content: String,
    pub(crate) is_error: bool,
}

/// A call handed to the client, waiting for its result.
#[derive(Debug)]
pub(crate) struct PendingCall {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) arguments: Map<String, Value>,
    reply: oneshot::Sender<ToolReply>,
}

impl PendingCall {
    /// Answers the call at once (the client will not see it).
    pub(crate) fn answer_now(self, reply: ToolReply) {
        let _ = self.reply.send(reply);
    }

    pub(crate) fn new(call: McpCall) -> PendingCall {
        PendingCall {
            id: format!("{CALL_PREFIX}{}", uuid::Uuid::new_v4().simple()),
            name: call.name,
            arguments: call.arguments,
            reply: call.reply,
        }
    }
}

/// A run stopped at tool calls, waiting for the client's results.
pub(crate) struct Parked {
    pub(crate) run: PromptRun,
    pub(crate) calls: Vec<PendingCall>,
    /// The key that started it (None: no auth); only it may continue.
    pub(crate) owner: Option<String>,
    /// The client tools of the run (the continuation knows which of the CLI's tool events are
    /// client calls).
    pub(crate) tools: ClientTools,
}

/// Why the results of a request do not continue a parked run.
#[derive(Debug, PartialEq)]
pub(crate) enum Unmatched {
    /// None of the ids was issued here: a conversation from elsewhere (render it as text).
    Foreign,
    /// An id issued here whose call expired (its run was stopped).
    Expired(String),
    /// An id issued here that is not pending (answered already, or the daemon restarted).
    Unknown(String),
    /// The run waits for more results than the request carries.
    Missing(Vec<String>),
}

struct Endpoint {
    tools: Arc<Vec<ClientTool>>,
    /// The run that listens now (one at a time: a session's turns are serial).
    listener: Option<(u64, mpsc::UnboundedSender<McpCall>)>,
}

type Slot = Arc<Mutex<Option<Parked>>>;

#[derive(Default)]
struct State {
    endpoints: HashMap<String, Endpoint>,
    parked: HashMap<String, Slot>,
    /// The parked runs, oldest first, with their call ids.
    parked_order: VecDeque<(Vec<String>, Slot)>,
    expired: HashSet<String>,
    expired_order: VecDeque<String>,
    generation: u64,
}

/// The daemon's client-tool state (in `Ctx`).
pub(crate) struct ToolHub {
    secret: [u8; 32],
    port: OnceLock<u16>,
    state: Arc<Mutex<State>>,
}

impl Default for ToolHub {
    fn default() -> Self {
        let mut secret = [0u8; 32];
        secret[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        secret[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        ToolHub {
            secret,
            port: OnceLock::new(),
            state: Arc::default(),
        }
    }
}

/// Removes the run's listener from its endpoint when the run ends.
pub(crate) struct Registration {
    state: Arc<Mutex<State>>,
    token: String,
    generation: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut st = lock(&self.state);
        if let Some(ep) = st.endpoints.get_mut(&self.token) {
            if ep.listener.as_ref().map(|(g, _)| *g) == Some(self.generation) {
                ep.listener = None;
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ToolHub {
    /// Binds the MCP listener on a loopback port and serves it until `stop`.
    pub(crate) fn start(
        self: &Arc<Self>,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let std = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        std.set_nonblocking(true)?;
        let port = std.local_addr()?.port();
        let _ = self.port.set(port);
        let listener = tokio::net::TcpListener::from_std(std)?;
        let hub = self.clone();
        tokio::spawn(serve(hub, listener, stop));
        tracing::debug!(port, "MCP endpoint for client tools listening on 127.0.0.1");
        Ok(())
    }

    /// Opens (or reopens) the endpoint of `tools.scope` for a run: the URL for the CLI, the
    /// registration that closes it for this run, and the calls the model makes.
    pub(crate) fn open(
        &self,
        tools: &ClientTools,
    ) -> Result<(String, Registration, mpsc::UnboundedReceiver<McpCall>), String> {
        let port = *self
            .port
            .get()
            .ok_or("the MCP endpoint for client tools is not listening")?;
        let token = self.token(tools);
        let (tx, rx) = mpsc::unbounded_channel();
        let mut st = lock(&self.state);
        st.generation += 1;
        let generation = st.generation;
        let ep = st
            .endpoints
            .entry(token.clone())
            .or_insert_with(|| Endpoint {
                tools: Arc::new(tools.tools.clone()),
                listener: None,
            });
        ep.listener = Some((generation, tx));
        drop(st);
        Ok((
            format!("http://127.0.0.1:{port}/mcp/{token}"),
            Registration {
                state: self.state.clone(),
                token,
                generation,
            },
            rx,
        ))
    }

    /// The endpoint token: stable for one scope and tool set, unguessable without the
    /// daemon's secret.
    fn token(&self, tools: &ClientTools) -> String {
        let mut h = Sha256::new();
        h.update(self.secret);
        h.update(tools.scope.as_bytes());
        for t in &tools.tools {
            h.update(b"\0");
            h.update(t.name.as_bytes());
            h.update(b"\0");
            h.update(t.description.as_bytes());
            h.update(b"\0");
            h.update(t.parameters.to_string().as_bytes());
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parks a run at its tool calls until the client's results come, or
    /// `tools.pending_timeout_secs` pass (then the run is stopped).
    pub(crate) fn park(&self, mut parked: Parked, timeout: Duration, max_parked: usize) {
        parked.run.hold_for(timeout);
        // Waiting is not running: the slot goes back until the results come.
        parked.run.release_slot();
        let ids: Vec<String> = parked.calls.iter().map(|c| c.id.clone()).collect();
        let slot: Slot = Arc::new(Mutex::new(Some(parked)));
        let evicted = {
            let mut st = lock(&self.state);
            for id in &ids {
                st.parked.insert(id.clone(), slot.clone());
            }
            st.parked_order.push_back((ids.clone(), slot.clone()));
            // Beyond `tools.max_parked_runs`, the oldest parked run goes (a client that never
            // answers must not hold CLIs and concurrency slots for long).
            let mut evicted = Vec::new();
            while st.parked_order.len() > max_parked.max(1) {
                if let Some(old) = st.parked_order.pop_front() {
                    evicted.push(old);
                }
            }
            evicted
        };
        metrics::gauge!("clinvk_tool_calls_pending").increment(ids.len() as f64);
        for (old_ids, old_slot) in evicted {
            expire(
                &self.state,
                &old_ids,
                &old_slot,
                "more runs wait for tool results than tools.max_parked_runs",
            );
        }
        let state = self.state.clone();
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            expire(
                &state,
                &ids,
                &slot,
                "no result within tools.pending_timeout_secs",
            );
        });
    }

    /// The id of the one call named `name` (the function's name) that a run of `owner` waits
    /// for: how a result in the legacy form (`role: function`, which names the function, not
    /// the call) finds its call. None when no such call waits, or several do.
    pub(crate) fn pending_id_by_name(&self, name: &str, owner: Option<&str>) -> Option<String> {
        let st = lock(&self.state);
        let mut found = st.parked.iter().filter_map(|(id, slot)| {
            let guard = lock(slot);
            let parked = guard.as_ref()?;
            (parked.owner.as_deref() == owner
                && parked.calls.iter().any(|c| &c.id == id && c.name == name))
            .then(|| id.clone())
        });
        let first = found.next()?;
        found.next().is_none().then_some(first)
    }

    /// The parked run the results (call ids) answer; every call it waits for must be answered.
    pub(crate) fn take(&self, ids: &[String], owner: Option<&str>) -> Result<Parked, Unmatched> {
        let mut st = lock(&self.state);
        if let Some(id) = ids.iter().find(|id| st.expired.contains(*id)) {
            return Err(Unmatched::Expired(id.clone()));
        }
        let Some(slot) = ids.iter().find_map(|id| st.parked.get(id)).cloned() else {
            return Err(match ids.iter().find(|id| id.starts_with(CALL_PREFIX)) {
                Some(id) => Unmatched::Unknown(id.clone()),
                None => Unmatched::Foreign,
            });
        };
        let mut guard = lock(&slot);
        let Some(parked) = guard.as_ref() else {
            return Err(Unmatched::Unknown(ids[0].clone()));
        };
        if parked.owner.as_deref() != owner {
            return Err(Unmatched::Unknown(ids[0].clone()));
        }
        if let Some(stray) = ids
            .iter()
            .find(|id| !parked.calls.iter().any(|c| &c.id == *id))
        {
            return Err(Unmatched::Unknown(stray.clone()));
        }
        let missing: Vec<String> = parked
            .calls
            .iter()
            .filter(|c| !ids.contains(&c.id))
            .map(|c| c.id.clone())
            .collect();
        if !missing.is_empty() {
            return Err(Unmatched::Missing(missing));
        }
        let parked = guard
            .take()
            .ok_or_else(|| Unmatched::Unknown(ids[0].clone()))?;
        drop(guard);
        for c in &parked.calls {
            st.parked.remove(&c.id);
        }
        st.parked_order.retain(|(_, s)| !Arc::ptr_eq(s, &slot));
        metrics::gauge!("clinvk_tool_calls_pending").decrement(parked.calls.len() as f64);
        Ok(parked)
    }
}

impl Parked {
    /// Answers every waiting `tools/call` with the client's results (by call id); the run
    /// goes on (its continuation is the caller's to read).
    pub(crate) fn answer(self, results: &HashMap<String, ToolReply>) -> (PromptRun, ClientTools) {
        for call in self.calls {
            let reply = results.get(&call.id).cloned().unwrap_or(ToolReply {
                content: "no result".into(),
                is_error: true,
            });
            // The CLI may have given up on the call meanwhile: its run's end says so.
            let _ = call.reply.send(reply);
        }
        let mut run = self.run;
        run.restart_timeout();
        (run, self.tools)
    }
}

/// Stops a parked run that waited in vain (if it still waits): its ids are remembered as
/// expired (a late result gets 409) and its CLI is stopped for good.
fn expire(state: &Mutex<State>, ids: &[String], slot: &Slot, why: &str) {
    let Some(mut parked) = lock(slot).take() else {
        return; // continued meanwhile
    };
    {
        let mut st = lock(state);
        for id in ids {
            st.parked.remove(id);
            st.expired.insert(id.clone());
            st.expired_order.push_back(id.clone());
        }
        st.parked_order.retain(|(_, s)| !Arc::ptr_eq(s, slot));
        while st.expired_order.len() > EXPIRED_KEPT {
            if let Some(old) = st.expired_order.pop_front() {
                st.expired.remove(&old);
            }
        }
    }
    metrics::gauge!("clinvk_tool_calls_pending").decrement(ids.len() as f64);
    metrics::counter!("clinvk_tool_calls_expired_total").increment(ids.len() as u64);
    tracing::info!(calls = ?ids, why, "tool calls expired without a result; the run is stopped");
    // The CLI waits on the calls: its process (warm worker or not) is stopped.
    parked.run.abandon();
    drop(parked);
}

async fn serve(
    hub: Arc<ToolHub>,
    listener: tokio::net::TcpListener,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "MCP endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let hub = hub.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let hub = hub.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&hub, req).await) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30));
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Largest JSON-RPC message a CLI may send.
const MAX_BODY: usize = 4 * 1024 * 1024;

async fn handle(hub: &ToolHub, req: hyper::Request<hyper::body::Incoming>) -> Response {
    use http_body_util::BodyExt as _;
    let path = req.uri().path().to_string();
    let Some(token) = path.strip_prefix("/mcp/").map(str::to_string) else {
        return plain(StatusCode::NOT_FOUND, "not found");
    };
    let tools = {
        let st = lock(&hub.state);
        match st.endpoints.get(&token) {
            Some(ep) => ep.tools.clone(),
            None => return plain(StatusCode::NOT_FOUND, "no such MCP endpoint"),
        }
    };
    match *req.method() {
        warp::http::Method::POST => {}
        // Sessions are not kept and the server never starts a stream of its own.
        warp::http::Method::DELETE => return plain(StatusCode::OK, ""),
        _ => return plain(StatusCode::METHOD_NOT_ALLOWED, "POST only"),
    }
    let body = match http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => return plain(StatusCode::PAYLOAD_TOO_LARGE, "body too large"),
    };
    let msg: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return rpc_json(json!({"jsonrpc": "2.0", "id": null,
                "error": {"code": -32700, "message": format!("parse error: {e}")}}))
        }
    };
    let Some(id) = msg.get("id").cloned().filter(|v| !v.is_null()) else {
        // A notification or a response: nothing to answer.
        return plain(StatusCode::ACCEPTED, "");
    };
    let method = msg.get("method").and_then(Value::as_str).unwrap_or("");
    let params = msg.get("params").cloned().unwrap_or(Value::Null);
    let result = match method {
        "initialize" => {
            let version = params
                .get("protocolVersion")
                .and_then(Value::as_str)
                .unwrap_or("2025-06-18");
            json!({
                "protocolVersion": version,
                "capabilities": {"tools": {"listChanged": false}},
                "serverInfo": {"name": SERVER_NAME, "version": clinvk_shared::VERSION},
            })
        }
        "ping" => json!({}),
        "tools/list" => json!({"tools": tools.iter().map(|t| json!({
            "name": t.name,
            "description": t.description,
            "inputSchema": t.parameters,
            // Lets a CLI run several calls of one turn at once (claude runs read-only
            // tools concurrently), so that parallel calls reach the client together.
            "annotations": {"readOnlyHint": true},
        })).collect::<Vec<_>>()}),
        "tools/call" => return call(hub, &token, &tools, id, &params),
        _ => {
            return rpc_json(json!({"jsonrpc": "2.0", "id": id,
                "error": {"code": -32601, "message": format!("method not found: {method}")}}))
        }
    };
    rpc_json(json!({"jsonrpc": "2.0", "id": id, "result": result}))
}

/// `tools/call`: hands the call to the run and answers (as an SSE stream, with keep-alives
/// while the client works) when the client's result comes.
fn call(hub: &ToolHub, token: &str, tools: &[ClientTool], id: Value, params: &Value) -> Response {
    let name = params
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let arguments = params
        .get("arguments")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let tool_error = |text: String| {
        rpc_json(json!({"jsonrpc": "2.0", "id": id,
            "result": {"content": [{"type": "text", "text": text}], "isError": true}}))
    };
    if !tools.iter().any(|t| t.name == name) {
        return tool_error(format!("unknown tool {name:?}"));
    }
    let listener = {
        let st = lock(&hub.state);
        st.endpoints
            .get(token)
            .and_then(|ep| ep.listener.as_ref().map(|(_, tx)| tx.clone()))
    };
    let Some(listener) = listener else {
        return tool_error("no request is waiting for this tool call".into());
    };
    let (reply_tx, reply_rx) = oneshot::channel();
    if listener
        .send(McpCall {
            name,
            arguments,
            reply: reply_tx,
        })
        .is_err()
    {
        return tool_error("no request is waiting for this tool call".into());
    }
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        tokio::pin!(reply_rx);
        let reply = loop {
            tokio::select! {
                r = &mut reply_rx => break r,
                _ = tokio::time::sleep(Duration::from_secs(15)) => {
                    if tx.send(Bytes::from_static(b": keep-alive\n\n")).await.is_err() {
                        return;
                    }
                }
            }
        };
        let reply = reply.unwrap_or(ToolReply {
            content: "the client did not answer this tool call".into(),
            is_error: true,
        });
        let msg = json!({"jsonrpc": "2.0", "id": id, "result": {
            "content": [{"type": "text", "text": reply.content}],
            "isError": reply.is_error,
        }});
        let frame = format!("event: message\ndata: {msg}\n\n");
        let _ = tx.send(Bytes::from(frame)).await;
    });
    crate::http::streamed(rx, "text/event-stream")
}

fn rpc_json(v: Value) -> Response {
    crate::http::error::json_response(StatusCode::OK, &v)
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    let mut r = Response::new(text.into());
    *r.status_mut() = status;
    r
}

#[cfg(test)]
mod parking_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn tools(names: &[&str]) -> ClientTools {
        ClientTools {
            tools: names
                .iter()
                .map(|n| ClientTool {
                    name: n.to_string(),
                    description: String::new(),
                    parameters: json!({"type": "object"}),
                    namespace: None,
                    client_name: None,
                })
                .collect(),
            builtin: false,
            scope: "s".into(),
            url: None,
            call_timeout_secs: 60,
        }
    }

    #[test]
    fn client_tools_are_recognised_under_each_clis_name() {
        let t = tools(&["get_weather"]);
        for reported in [
            "get_weather",
            "mcp__clinvk__get_weather",
            "clinvk.get_weather",
            "mcp_clinvk_get_weather",
            "clinvk-get_weather",
        ] {
            assert!(t.is_client_tool(reported), "{reported}");
        }
        for reported in [
            "weather",
            "mcp__other__get_weather",
            "Bash",
            "my_get_weather",
            "other-get_weather",
        ] {
            assert!(!t.is_client_tool(reported), "{reported}");
        }
    }

    #[test]
    fn tokens_are_stable_per_scope_and_tools_and_secret() {
        let hub = ToolHub::default();
        let a = tools(&["x"]);
        assert_eq!(hub.token(&a), hub.token(&a.clone()));
        let mut other_scope = a.clone();
        other_scope.scope = "t".into();
        assert_ne!(hub.token(&a), hub.token(&other_scope));
        assert_ne!(hub.token(&a), hub.token(&tools(&["y"])));
        // Another daemon (another secret) derives other tokens.
        assert_ne!(hub.token(&a), ToolHub::default().token(&a));
        assert_eq!(hub.token(&a).len(), 64);
    }
}
