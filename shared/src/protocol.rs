//! The control protocol between the daemon and its clients, spoken over the local socket.
//!
//! Frames are length-delimited JSON: a 4-byte big-endian length, then that many bytes of JSON.
//! A connection starts with a handshake (`ClientFrame::Hello` → `ServerFrame::Welcome`, or
//! `ServerFrame::Error` when the versions do not match), then the client sends one
//! `ClientFrame::Request`. The daemon answers with one `Reply`, or — for streaming requests —
//! with `Event` frames closed by `End` (or `Error`). Closing the connection cancels a streaming
//! request (a running prompt is cancelled in the daemon).

use crate::api::{
    BackendList, ChainRequest, ChainResult, CompareRequest, CompareResult, KeyAddRequest, KeyList,
    KeyRevoked, ListQuery, NewKey, ParallelRequest, ParallelResult, PromptOutcome, PromptRequest,
    RunEvent, SessionDeleted, SessionDetail, SessionPage, TaskDone, UsageQuery, UsageReport,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bumped when frames change incompatibly.
pub const PROTOCOL_VERSION: u32 = 2;
/// Largest frame either side accepts.
pub const MAX_FRAME_BYTES: usize = 32 * 1024 * 1024;
/// How long the daemon waits for a client's `Hello`.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 5_000;

/// A frame sent by a client.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "frame", content = "body", rename_all = "snake_case")]
pub enum ClientFrame {
    Hello(Hello),
    Request(Request),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u32,
    /// e.g. `clinvkctl 0.1.0`
    pub client: String,
}

/// A frame sent by the daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "frame", content = "body", rename_all = "snake_case")]
pub enum ServerFrame {
    Welcome(Welcome),
    /// The answer; for a streaming request, after its events.
    Reply(Reply),
    /// One event of a streaming answer.
    Event(Event),
    /// The end of an `Attach` stream (the daemon is stopping).
    End,
    Error(ErrorBody),
}

/// An event of a streaming answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// Of a `Prompt`.
    Run(RunEvent),
    /// Of a `Parallel`: one task has ended.
    TaskDone(TaskDone),
    /// Of an `Attach`.
    Attach(AttachEvent),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Welcome {
    pub protocol: u32,
    pub daemon_version: String,
    pub pid: u32,
}

/// An error answer: a machine code and a message for people.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// What a client can ask.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", content = "args", rename_all = "snake_case")]
pub enum Request {
    /// The daemon's state (`Reply::Status`).
    Status,
    /// Re-read the configuration; an invalid one is refused and the running one stays.
    Reload,
    /// Stop the daemon (graceful drain).
    Stop,
    /// Stream request and log events (`Event::Attach`) until the client leaves (or `End`).
    Attach,
    /// Run a prompt: `Event::Run` frames, then `Reply::Prompt`. Closing the connection cancels
    /// it (its CLI is killed with its group).
    Prompt(Box<PromptRequest>),
    /// `Event::TaskDone` frames, then `Reply::Parallel`.
    Parallel(ParallelRequest),
    Chain(ChainRequest),
    Compare(CompareRequest),
    Backends,
    Sessions(SessionsRequest),
    Keys(KeysRequest),
    /// Runs and tokens, grouped (`Reply::Usage`).
    Usage(UsageQuery),
    Accounts(AccountsRequest),
}

/// The backends' accounts (`clinvkctl accounts`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum AccountsRequest {
    List,
    /// Makes `<state>/accounts/<backend>/<name>/` (0700); a token is stored there (0600) and
    /// passed to the CLI by environment.
    Add {
        backend: crate::api::Backend,
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
    /// Removes a folder account (its folder, logins and token with it).
    Remove {
        backend: crate::api::Backend,
        name: String,
    },
}

/// The session operations (the control socket sees every session).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum SessionsRequest {
    List(ListQuery),
    Get { id: String },
    Delete { id: String },
    Clean { older_than_days: u64 },
}

/// The daemon's own API keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum KeysRequest {
    Add(KeyAddRequest),
    List,
    Revoke { id: String },
}

/// A one-shot answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", content = "data", rename_all = "snake_case")]
pub enum Reply {
    Status(Box<StatusInfo>),
    Reloaded {
        changed: Vec<String>,
        warnings: Vec<String>,
    },
    Stopping,
    Prompt(Box<PromptOutcome>),
    Parallel(Box<ParallelResult>),
    Chain(Box<ChainResult>),
    Compare(Box<CompareResult>),
    Backends(BackendList),
    Sessions(SessionPage),
    Session(Box<SessionDetail>),
    SessionDeleted(SessionDeleted),
    SessionsCleaned {
        deleted: usize,
    },
    KeyAdded(NewKey),
    Keys(KeyList),
    KeyRevoked(KeyRevoked),
    Usage(Box<UsageReport>),
    Accounts(crate::quota::AccountList),
    AccountAdded(crate::quota::AccountAdded),
    AccountRemoved(crate::quota::AccountRemoved),
}

/// What `clinvkctl status` shows.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct StatusInfo {
    pub pid: u32,
    pub version: String,
    pub uptime_ms: u64,
    pub started_at: String,
    /// e.g. `http://127.0.0.1:8080`
    pub http_url: String,
    pub http_addr: String,
    pub config_path: String,
    pub config_loaded_from_file: bool,
    pub state_dir: String,
    pub socket_path: String,
    pub socket_activated: bool,
    pub draining: bool,
    pub reloads: u64,
    /// A digest of interesting config values, so a reload is visible.
    pub config_summary: serde_json::Value,
    pub requests_total: u64,
    pub requests_in_flight: u64,
    pub sessions: u64,
    pub runs: Vec<RunInfo>,
    pub backends: Vec<BackendStatus>,
    /// The live CLI processes kept between turns (warm mode).
    #[serde(default)]
    pub workers: Vec<WorkerInfo>,
    /// The accounts whose CLI reported quota windows (`GET /api/v1/accounts`).
    #[serde(default)]
    pub accounts: Vec<crate::quota::Account>,
}

/// One warm worker: a live CLI process kept between turns.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct WorkerInfo {
    pub id: String,
    pub backend: crate::api::Backend,
    pub pid: u32,
    /// The backend's own session id the worker holds (none for a pooled worker).
    pub backend_session_id: Option<String>,
    pub state: WorkerState,
    /// Milliseconds since the worker was started.
    pub age_ms: u64,
    /// Milliseconds since its last turn ended (or since it started).
    pub idle_ms: u64,
    /// Turns it has answered.
    pub turns: u64,
    /// Resident memory of its process group, in bytes (Linux).
    pub rss_bytes: Option<u64>,
}

/// Where a warm worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    /// Ready for a new session (the pool).
    Pooled,
    /// Holding a session, waiting for its next turn.
    Idle,
    /// Answering a turn.
    Busy,
}

impl std::fmt::Display for WorkerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WorkerState::Pooled => "pooled",
            WorkerState::Idle => "idle",
            WorkerState::Busy => "busy",
        })
    }
}

/// One running (or queued) CLI run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunInfo {
    pub id: String,
    pub backend: crate::api::Backend,
    pub pid: Option<u32>,
    pub age_ms: u64,
    pub state: RunState,
}

/// Where a CLI run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Started, its output being read.
    Running,
    /// Asked to stop (SIGTERM to its group); killed after the grace period.
    Cancelling,
    /// The grace period is over: SIGKILL sent.
    Killing,
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RunState::Running => "running",
            RunState::Cancelling => "cancelling",
            RunState::Killing => "killing",
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct BackendStatus {
    pub name: crate::api::Backend,
    pub enabled: bool,
    pub available: bool,
    pub version: Option<String>,
    pub command: String,
    pub path: Option<String>,
    pub message: Option<String>,
    pub default_model: Option<String>,
    /// `warm` (live CLI processes kept between turns) or `oneshot`.
    #[serde(default)]
    pub mode: crate::config::BackendMode,
    /// This backend's warm workers.
    #[serde(default)]
    pub workers: Vec<WorkerInfo>,
}

/// What `clinvk serve` shows while attached.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AttachEvent {
    Request {
        time: String,
        request_id: String,
        method: String,
        path: String,
        status: u16,
        duration_ms: u64,
    },
    Log {
        time: String,
        level: String,
        message: String,
    },
    /// The daemon is going away (stop or drain); the client should expect EOF.
    Stopping { reason: String },
}

/// Frame codec errors.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("frame of {0} bytes is larger than the {MAX_FRAME_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("malformed frame: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one frame. `Ok(None)` on a clean EOF before any byte of a frame.
pub async fn read_frame<R, T>(r: &mut R) -> Result<Option<T>, FrameError>
where
    R: AsyncRead + Unpin,
    T: serde::de::DeserializeOwned,
{
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(len));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            FrameError::Closed
        } else {
            FrameError::Io(e)
        }
    })?;
    Ok(Some(serde_json::from_slice(&buf)?))
}

/// Writes one frame and flushes it.
pub async fn write_frame<W, T>(w: &mut W, value: &T) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let bytes = serde_json::to_vec(value)?;
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(bytes.len()));
    }
    let mut out = Vec::with_capacity(bytes.len() + 4);
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(&bytes);
    w.write_all(&out).await?;
    w.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn roundtrip_and_limits() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        write_frame(&mut a, &ClientFrame::Request(Request::Status))
            .await
            .unwrap();
        let got: ClientFrame = read_frame(&mut b).await.unwrap().unwrap();
        assert!(matches!(got, ClientFrame::Request(Request::Status)));

        // An oversized length prefix is refused without allocating it.
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let e = read_frame::<_, ClientFrame>(&mut b).await.unwrap_err();
        assert!(matches!(e, FrameError::TooLarge(_)));

        // Garbage JSON is a malformed frame.
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(&5u32.to_be_bytes()).await.unwrap();
        a.write_all(b"nope!").await.unwrap();
        assert!(matches!(
            read_frame::<_, ClientFrame>(&mut b).await.unwrap_err(),
            FrameError::Malformed(_)
        ));

        // Clean EOF.
        drop(a);
        assert!(read_frame::<_, ClientFrame>(&mut b)
            .await
            .unwrap()
            .is_none());
    }

    #[test]
    fn wire_shape_is_stable() {
        let v = serde_json::to_value(ClientFrame::Request(Request::Prompt(Box::new(
            crate::api::PromptRequest {
                prompt: Some("hi".into()),
                ..Default::default()
            },
        ))))
        .unwrap();
        assert_eq!(v["frame"], "request");
        assert_eq!(v["body"]["op"], "prompt");
        assert_eq!(v["body"]["args"]["prompt"], "hi");
        let v = serde_json::to_value(Request::Sessions(SessionsRequest::Get { id: "x".into() }))
            .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"op": "sessions", "args": {"action": "get", "id": "x"}})
        );
        let back: Request = serde_json::from_value(v).unwrap();
        assert!(matches!(
            back,
            Request::Sessions(SessionsRequest::Get { .. })
        ));
    }
}
