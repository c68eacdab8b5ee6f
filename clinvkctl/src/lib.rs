//! Thin clients of clinvkd: connecting to the control socket, the handshake, one request and its
//! answer, and starting the daemon when a command needs it. No business logic lives here.

pub mod cmd;

use clinvk_shared::paths::Paths;
use clinvk_shared::protocol::{
    read_frame, write_frame, ClientFrame, ErrorBody, Event, Hello, Reply, Request, ServerFrame,
    StatusInfo, PROTOCOL_VERSION,
};
use interprocess::local_socket::tokio::Stream;
use interprocess::local_socket::traits::tokio::Stream as _;
use interprocess::local_socket::{GenericFilePath, ToFsName};
use std::path::PathBuf;
use std::time::Duration;

/// Exit codes shared by `clinvk` and `clinvkctl` (documented in `--help` and the README).
pub mod exit {
    pub const OK: u8 = 0;
    /// A failure: the daemon refused, a run failed, an I/O problem.
    pub const FAILURE: u8 = 1;
    /// Bad command-line usage (clap's own code).
    pub const USAGE: u8 = 2;
    /// No daemon is running (and the command does not start one).
    pub const NOT_RUNNING: u8 = 3;
    /// Interrupted by Ctrl-C.
    pub const INTERRUPTED: u8 = 130;
}

/// A client-side error, with the exit code it maps to.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no clinvkd is running for {0} (start one with `clinvk serve`)")]
    NotRunning(String),
    #[error("{}", .0.message)]
    Daemon(ErrorBody),
    /// The daemon could not listen: its port is taken (clinvkd's own exit code says so).
    #[error("{0}")]
    PortInUse(String),
    #[error("{0}")]
    Other(String),
}

impl ClientError {
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::NotRunning(_) => exit::NOT_RUNNING,
            _ => exit::FAILURE,
        }
    }
}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        ClientError::Other(e.to_string())
    }
}

impl From<clinvk_shared::protocol::FrameError> for ClientError {
    fn from(e: clinvk_shared::protocol::FrameError) -> Self {
        ClientError::Other(format!("control connection: {e}"))
    }
}

/// Finds the folders from the environment.
pub fn paths() -> Result<Paths, ClientError> {
    Paths::from_env().map_err(|e| ClientError::Other(e.to_string()))
}

/// An open, handshaken connection to the daemon.
pub struct Connection {
    stream: Stream,
    pub daemon_pid: u32,
    pub daemon_version: String,
}

impl Connection {
    /// Connects and does the handshake. `NotRunning` when no daemon answers.
    pub async fn open(paths: &Paths, client: &str) -> Result<Connection, ClientError> {
        let sock = paths.socket();
        let name = sock.as_path().to_fs_name::<GenericFilePath>()?;
        let stream = match Stream::connect(name).await {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Err(ClientError::NotRunning(
                    paths.state_dir.display().to_string(),
                ))
            }
            Err(e) => {
                return Err(ClientError::Other(format!(
                    "cannot connect to {}: {e}",
                    sock.display()
                )))
            }
        };
        let mut conn = Connection {
            stream,
            daemon_pid: 0,
            daemon_version: String::new(),
        };
        let sent = conn
            .send(&ClientFrame::Hello(Hello {
                protocol: PROTOCOL_VERSION,
                client: format!("{client} {}", clinvk_shared::VERSION),
            }))
            .await;
        // Even when sending failed, the daemon may have said why it closed (e.g. wrong user).
        let answer = tokio::time::timeout(Duration::from_secs(10), conn.recv()).await;
        if let (Err(e), Ok(Err(_)) | Err(_)) = (&sent, &answer) {
            return Err(ClientError::Other(e.to_string()));
        }
        match answer {
            Ok(Ok(ServerFrame::Welcome(w))) => {
                conn.daemon_pid = w.pid;
                conn.daemon_version = w.daemon_version;
                Ok(conn)
            }
            Ok(Ok(ServerFrame::Error(e))) => Err(ClientError::Daemon(e)),
            Ok(Ok(other)) => Err(ClientError::Other(format!(
                "unexpected handshake answer: {other:?}"
            ))),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ClientError::Other(
                "the daemon did not answer the handshake".into(),
            )),
        }
    }

    pub async fn send(&mut self, frame: &ClientFrame) -> Result<(), ClientError> {
        let mut w = &self.stream;
        Ok(write_frame(&mut w, frame).await?)
    }

    /// The next frame from the daemon; EOF is an error here.
    pub async fn recv(&mut self) -> Result<ServerFrame, ClientError> {
        let mut r = &self.stream;
        match read_frame::<_, ServerFrame>(&mut r).await? {
            Some(f) => Ok(f),
            None => Err(ClientError::Other(
                "the daemon closed the connection".into(),
            )),
        }
    }

    /// Sends one request and returns its one-shot reply.
    pub async fn request(&mut self, req: Request) -> Result<Reply, ClientError> {
        self.send(&ClientFrame::Request(req)).await?;
        match self.recv().await? {
            ServerFrame::Reply(r) => Ok(r),
            ServerFrame::Error(e) => Err(ClientError::Daemon(e)),
            other => Err(ClientError::Other(format!("unexpected answer: {other:?}"))),
        }
    }
}

/// One request on a fresh connection.
pub async fn request(paths: &Paths, client: &str, req: Request) -> Result<Reply, ClientError> {
    Connection::open(paths, client).await?.request(req).await
}

/// The daemon's status.
pub async fn status(paths: &Paths, client: &str) -> Result<StatusInfo, ClientError> {
    match request(paths, client, Request::Status).await? {
        Reply::Status(s) => Ok(*s),
        other => Err(ClientError::Other(format!("unexpected answer: {other:?}"))),
    }
}

/// How to start a daemon in the background.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub config: Option<PathBuf>,
    /// `--insecure`: let it serve a non-loopback host without authentication.
    pub insecure: bool,
}

/// A daemon this client started.
pub struct Started {
    pub child: tokio::process::Child,
    pub status: StatusInfo,
    pub stderr_file: PathBuf,
}

/// The `clinvkd` next to this executable, else the one on PATH.
pub fn daemon_executable() -> PathBuf {
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            let candidate = dir.join("clinvkd");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    PathBuf::from("clinvkd")
}

/// Starts `clinvkd` in the background (own session, logs to its log file) and waits until it
/// answers on the control socket. If another client started one meanwhile, returns `Ok(None)`.
pub async fn start_daemon(
    paths: &Paths,
    opts: &StartOptions,
) -> Result<Option<Started>, ClientError> {
    let exe = daemon_executable();
    let log_dir = paths.log_dir();
    // Logs may quote prompts at debug level: private to the user.
    clinvk_shared::paths::ensure_private_dir(&paths.state_dir)?;
    clinvk_shared::paths::ensure_private_dir(&log_dir)?;
    let stderr_file = log_dir.join("clinvkd.stderr");
    let mut opts_file = std::fs::OpenOptions::new();
    opts_file.write(true).create(true).truncate(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts_file, 0o600);
    let stderr = opts_file.open(&stderr_file)?;
    let mut cmd = tokio::process::Command::new(&exe);
    cmd.arg("--setsid")
        .arg("--log-file")
        .arg(log_dir.join("clinvkd.log"));
    if let Some(h) = &opts.host {
        cmd.arg("--host").arg(h);
    }
    if let Some(p) = opts.port {
        cmd.arg("--port").arg(p.to_string());
    }
    if let Some(c) = &opts.config {
        cmd.arg("--config").arg(c);
    }
    if opts.insecure {
        cmd.arg("--insecure");
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .kill_on_drop(false);
    let mut child = cmd.spawn().map_err(|e| {
        ClientError::Other(format!(
            "cannot start {}: {e} (is clinvkd installed?)",
            exe.display()
        ))
    })?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(code) = child.try_wait()? {
            // It exited: perhaps another one won the race, else it failed to start.
            if let Ok(status) = status(paths, "clinvk").await {
                let _ = status;
                return Ok(None);
            }
            let text = std::fs::read_to_string(&stderr_file).unwrap_or_default();
            let text = text.trim();
            let message = format!(
                "clinvkd exited ({code}) before it was ready{}",
                if text.is_empty() {
                    String::new()
                } else {
                    format!(":\n{text}")
                }
            );
            return Err(
                if code.code() == Some(i32::from(clinvk_shared::EXIT_PORT_IN_USE)) {
                    ClientError::PortInUse(message)
                } else {
                    ClientError::Other(message)
                },
            );
        }
        match status(paths, "clinvk").await {
            Ok(s) if s.pid == child.id().unwrap_or(0) => {
                return Ok(Some(Started {
                    child,
                    status: s,
                    stderr_file,
                }))
            }
            Ok(_) => {} // another daemon answers; ours will exit with "already running"
            Err(ClientError::NotRunning(_)) => {}
            Err(e) => return Err(e),
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = child.start_kill();
            return Err(ClientError::Other(
                "clinvkd did not become ready within 30 s".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Runs an async client main on a small runtime and maps its result to an exit code.
pub fn block_on<F>(fut: F) -> std::process::ExitCode
where
    F: std::future::Future<Output = Result<u8, ClientError>>,
{
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(exit::FAILURE);
        }
    };
    match rt.block_on(fut) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(e.exit_code())
        }
    }
}

/// Connects to the daemon, starting it (in the background, on its configured address) when
/// none runs — the everyday commands need one.
pub async fn ensure_daemon(paths: &Paths, client: &str) -> Result<Connection, ClientError> {
    match Connection::open(paths, client).await {
        Err(ClientError::NotRunning(_)) => {
            eprintln!("starting clinvkd…");
            if let Some(s) = start_daemon(paths, &StartOptions::default()).await? {
                eprintln!(
                    "clinvkd started (pid {}), serving {}",
                    s.status.pid, s.status.http_url
                );
            }
            Connection::open(paths, client).await
        }
        other => other,
    }
}

/// Sends one operation (starting the daemon when none runs) and returns its answer.
pub async fn call(paths: &Paths, req: Request) -> Result<Reply, ClientError> {
    ensure_daemon(paths, "clinvk").await?.request(req).await
}

/// The error for an answer of another kind than the request calls for.
pub fn unexpected(reply: Reply) -> ClientError {
    ClientError::Other(format!("unexpected answer from clinvkd: {reply:?}"))
}

/// Prints `v` as pretty JSON.
pub fn print_json<T: serde::Serialize>(v: &T) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("error: cannot print the answer as JSON: {e}"),
    }
}

/// Prints `v` as one line of JSON (`-o stream-json`).
pub fn print_line<T: serde::Serialize>(v: &T) {
    match serde_json::to_string(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("error: cannot print an event as JSON: {e}"),
    }
}

/// Sends an operation that streams events before its answer (`parallel`): `on_event` sees each
/// event; returns the answer.
pub async fn call_stream(
    paths: &Paths,
    req: Request,
    mut on_event: impl FnMut(Event),
) -> Result<Reply, ClientError> {
    let mut conn = ensure_daemon(paths, "clinvk").await?;
    conn.send(&ClientFrame::Request(req)).await?;
    loop {
        match conn.recv().await? {
            ServerFrame::Event(ev) => on_event(ev),
            ServerFrame::Reply(r) => return Ok(r),
            ServerFrame::Error(e) => return Err(ClientError::Daemon(e)),
            other => return Err(ClientError::Other(format!("unexpected answer: {other:?}"))),
        }
    }
}
