//! The test seam of the core (unit tests only): a complete `Ctx` in a temporary folder, and a
//! fake CLI to put behind a backend, so that `plan`, the engine, the warm workers and the tool
//! hub can be tested without a daemon, a network or a real CLI.
//!
//! - `Ctx::for_tests(|s| …)` (or `CtxBuilder` for other fakes): default settings edited by the
//!   closure and checked like a loaded configuration, the state folder in a `TempDir` that lives
//!   as long as the context, the default workdir created, a `FakeAdapter` behind every backend.
//! - `FakeAdapter`: a `/bin/sh -c` program per run (one-shot) or per worker (live mode), and
//!   the parser and `Driver` of its output — one JSON object a line:
//!   `{"session": id}`, `{"text": t}`, `{"result": t}`, `{"error": m}` are events; in live
//!   mode `{"ready": true}` says the session is open and `{"end": true}` ends a turn. Any other
//!   line is `Unparsed`. The one-shot program gets the prompt as `$1` and the resumed session
//!   (if any) as `$2`; the worker program gets the resumed session as `$1` and reads the
//!   driver's lines: `open`, `turn <prompt>`, `interrupt`.
//!
//! A fake is `&'static` (`FakeAdapter::leak`) like the real adapters, so the engine takes it
//! unchanged; a test leaks one small struct.

use crate::backend::{
    self, Adapter, Adapters, ArgvError, CommandSpec, Driver, Event, Invocation, LineParser,
    LiveSpec, Step,
};
use crate::ctx::Ctx;
use clinvk_shared::api::{Backend, PromptRequest};
use clinvk_shared::config::{BackendSettings, Settings};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::watch;

/// The one-shot program of `FakeAdapter::new()`: a session, the prompt as text, exit 0.
pub(crate) const ECHO: &str = r#"printf '{"session":"%s"}\n{"text":"%s"}\n' "${2:-fake-$$}" "$1""#;

/// The worker program of `FakeAdapter::new()`: opens at once, answers each turn with the
/// session, the prompt as text and the turn's end; an interrupt ends the turn.
pub(crate) const ECHO_WORKER: &str = r#"sid=${1:-fake-$$}
while IFS= read -r line; do
  case $line in
    open) echo '{"ready":true}' ;;
    "turn "*) printf '{"session":"%s"}\n{"text":"%s"}\n{"end":true}\n' "$sid" "${line#turn }" ;;
    interrupt) echo '{"end":true}' ;;
    exit) exit 0 ;;
  esac
done"#;

impl Ctx {
    /// A complete context for a unit test: default settings edited by `edit`, a `FakeAdapter`
    /// behind every backend (see `CtxBuilder` for others).
    pub(crate) fn for_tests(edit: impl FnOnce(&mut Settings)) -> Ctx {
        CtxBuilder::new().settings(edit).build()
    }
}

/// Builds a test context (see the module's doc).
pub(crate) struct CtxBuilder {
    settings: Settings,
    adapters: Adapters,
    homes: Option<crate::engine::Homes>,
}

impl CtxBuilder {
    /// Default settings; the default `FakeAdapter` behind every backend (never a real CLI).
    pub(crate) fn new() -> Self {
        let mut adapters = Adapters::default();
        for b in Backend::ALL {
            adapters.set(b, FakeAdapter::new().stands_for(b).leak());
        }
        CtxBuilder {
            settings: Settings::default(),
            adapters,
            homes: None,
        }
    }

    pub(crate) fn settings(mut self, edit: impl FnOnce(&mut Settings)) -> Self {
        edit(&mut self.settings);
        self
    }

    /// Puts `adapter` (a fake, or a real one: `backend::adapter(b)`) behind `backend`.
    pub(crate) fn adapter(mut self, backend: Backend, adapter: &'static dyn Adapter) -> Self {
        self.adapters.set(backend, adapter);
        self
    }

    /// Homes for the workdir policy other than the test process's own.
    pub(crate) fn homes(mut self, homes: crate::engine::Homes) -> Self {
        self.homes = Some(homes);
        self
    }

    /// The context, in a new temporary folder. Panics on settings that a configuration file
    /// could not hold (a test would test nothing real).
    pub(crate) fn build(self) -> Ctx {
        clinvk_shared::config::validate(&self.settings, None)
            .unwrap_or_else(|e| panic!("invalid test settings: {e}"));
        let dir = tempfile::Builder::new()
            .prefix("clinvkd-test-")
            .tempdir()
            .expect("a temporary folder");
        let ctx = Ctx::for_tests_in(dir, self.settings, self.adapters, self.homes)
            .expect("a test context");
        crate::engine::prepare_default_workdir(&ctx).expect("the default workdir");
        ctx.supervisor
            .set_record_dir(ctx.paths.runtime_dir.join("runs"));
        ctx
    }
}

/// `f`'s output; a panic if it does not come within a minute. A guard against a hang only,
/// never a verdict on timing: what it guards takes milliseconds.
pub(crate) async fn no_hang<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(std::time::Duration::from_secs(60), f)
        .await
        .unwrap_or_else(|_| panic!("hung: {what}"))
}

/// A folder `name` in the test's temporary folder, outside the state folder (created; the
/// resolved path).
pub(crate) fn folder(ctx: &Ctx, name: &str) -> PathBuf {
    let p = ctx.test_dir().join(name);
    std::fs::create_dir_all(&p).expect("a test folder");
    std::fs::canonicalize(&p).expect("a test folder")
}

/// A prompt request as a client sends it.
pub(crate) fn request(backend: &str, prompt: &str) -> PromptRequest {
    PromptRequest {
        backend: Some(backend.into()),
        prompt: Some(prompt.into()),
        ..Default::default()
    }
}

/// Plans and starts a prompt as the daemon's owner (panics on a refusal).
pub(crate) async fn start_prompt(ctx: &Ctx, req: PromptRequest) -> crate::ops::prompt::PromptRun {
    let caller = crate::ops::Caller::control();
    let ask = crate::ops::prompt::Ask::from_request(req, clinvk_shared::api::ApiStyle::Native)
        .expect("a valid request");
    let plan = crate::ops::prompt::plan(ctx, &caller, ask).expect("a valid request");
    crate::ops::prompt::start(ctx, plan)
        .await
        .unwrap_or_else(|e| panic!("the prompt did not start: {}", e.message))
}

/// Starts a warm worker of `backend` as the engine does, for `session` (its backend session
/// id; None: a pooled worker).
pub(crate) async fn spawn_worker(
    ctx: &Ctx,
    backend: Backend,
    session: Option<&str>,
) -> crate::worker::Worker {
    let inv = Invocation {
        backend,
        workdir: Some(crate::engine::default_workdir(ctx)),
        resume: session.map(str::to_string),
        ..Default::default()
    };
    let key = crate::engine::worker_key(ctx, &inv).expect("a worker key");
    crate::engine::spawn_worker(ctx, &inv, key)
        .await
        .unwrap_or_else(|e| panic!("the fake worker did not start: {e}"))
}

/// A temporary file left by a writer that died (a daemon killed mid-write), as
/// `write_private_atomic` names them: `.<file>.tmp.<pid>.<n>`, given `age` (negative: in the
/// future).
pub(crate) fn leave_temp(dir: &std::path::Path, file: &str, pid: u32, age_secs: i64) -> PathBuf {
    let p = dir.join(format!(".{file}.tmp.{pid}.7"));
    std::fs::write(&p, b"{\"half\": ").expect("a temp file");
    let now = std::time::SystemTime::now();
    let d = std::time::Duration::from_secs(age_secs.unsigned_abs());
    let at = if age_secs >= 0 { now - d } else { now + d };
    std::fs::File::options()
        .write(true)
        .open(&p)
        .and_then(|f| f.set_modified(at))
        .expect("a temp file's time");
    p
}

/// A pid no process can have (above Linux's PID_MAX_LIMIT, 2^22).
pub(crate) const DEAD_PID: u32 = i32::MAX as u32;

/// A fake CLI (see the module's doc).
pub(crate) struct FakeAdapter {
    /// The backend it stands for (what `Adapter::backend` answers).
    backend: Backend,
    oneshot: String,
    worker: String,
    /// Drivers alive now (a worker's driver lives as long as the worker).
    drivers: Arc<watch::Sender<usize>>,
}

impl FakeAdapter {
    /// Echoes the prompt, one-shot (`ECHO`) and warm (`ECHO_WORKER`).
    pub(crate) fn new() -> Self {
        FakeAdapter {
            backend: Backend::Claude,
            oneshot: ECHO.into(),
            worker: ECHO_WORKER.into(),
            drivers: Arc::new(watch::channel(0).0),
        }
    }

    /// The backend it stands for.
    pub(crate) fn stands_for(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// Runs `script` (`sh -c`) for each one-shot run.
    pub(crate) fn oneshot(mut self, script: &str) -> Self {
        self.oneshot = script.into();
        self
    }

    /// Runs `script` (`sh -c`) for each worker.
    pub(crate) fn worker(mut self, script: &str) -> Self {
        self.worker = script.into();
        self
    }

    /// The fake as the engine holds adapters (`&'static`; the struct is leaked).
    pub(crate) fn leak(self) -> &'static FakeAdapter {
        Box::leak(Box::new(self))
    }

    /// How many of its drivers are alive: the workers it started that were not dropped (the
    /// engine also makes short-lived ones, e.g. for a worker's key).
    pub(crate) fn live_drivers(&self) -> usize {
        *self.drivers.borrow()
    }

    /// Resolves once exactly `n` of its drivers are alive (e.g. a worker was retired).
    pub(crate) async fn until_live_drivers(&self, n: usize) {
        let mut rx = self.drivers.subscribe();
        let _ = rx.wait_for(|alive| *alive == n).await;
    }
}

/// `sh -c script name args…`
fn shell(
    script: &str,
    name: &str,
    args: impl IntoIterator<Item = String>,
    inv: &Invocation,
) -> CommandSpec {
    let mut all = vec!["-c".to_string(), script.to_string(), name.to_string()];
    all.extend(args);
    CommandSpec {
        program: "/bin/sh".into(),
        args: all,
        env: vec![],
        cwd: inv.workdir.clone(),
        stdin: None,
    }
}

impl Adapter for FakeAdapter {
    fn backend(&self) -> Backend {
        self.backend
    }

    fn capabilities(&self) -> backend::Capabilities {
        backend::Capabilities {
            images: backend::ImageDelivery::Files,
            output_schema: backend::SchemaDelivery::Instruction,
            client_tools: backend::ToolSupport::Always,
        }
    }

    fn claims_model(&self, _lower: &str) -> bool {
        false
    }

    fn model_families(&self) -> &'static str {
        "fake-…"
    }

    fn credential_folders(&self) -> &'static [&'static str] {
        &[".fake-cli"]
    }

    fn build(&self, inv: &Invocation, _cfg: &BackendSettings) -> Result<CommandSpec, ArgvError> {
        let args = std::iter::once(inv.prompt.clone()).chain(inv.resume.clone());
        Ok(shell(&self.oneshot, "fake-cli", args, inv))
    }

    fn parser(&self) -> Box<dyn LineParser> {
        Box::new(FakeParser::default())
    }

    fn live(&self, inv: &Invocation, _cfg: &BackendSettings) -> Result<LiveSpec, ArgvError> {
        self.drivers.send_modify(|n| *n += 1);
        Ok(LiveSpec {
            command: shell(&self.worker, "fake-worker", inv.resume.clone(), inv),
            driver: Box::new(FakeDriver {
                open: false,
                held: Vec::new(),
                in_turn: false,
                _alive: Alive(self.drivers.clone()),
            }),
        })
    }

    fn builtin_extra_allowlist(&self) -> &'static [&'static str] {
        &["--add-dir", "--fake-switch"]
    }
}

/// One line of the fake CLI: its events, whether it says the session is open, whether it ends
/// the turn.
fn read_line(line: &str) -> (Vec<Event>, bool, bool) {
    let v = match backend::json_line(line) {
        Ok(v) => v,
        Err(events) => return (events, false, false),
    };
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let flag = |k: &str| v.get(k) == Some(&Value::Bool(true));
    let mut events = Vec::new();
    if let Some(session_id) = text("session") {
        events.push(Event::SessionStarted {
            session_id,
            model: text("model"),
        });
    }
    if let Some(text) = text("text") {
        events.push(Event::TextDelta { text });
    }
    if let Some(t) = text("result") {
        events.push(Event::Result {
            text: Some(t),
            is_error: false,
        });
    }
    if let Some(message) = text("error") {
        events.push(Event::Error { message });
    }
    let (ready, end) = (flag("ready"), flag("end"));
    if events.is_empty() && !ready && !end {
        events.push(Event::Unparsed {
            line: line.to_string(),
        });
    }
    (events, ready, end)
}

/// The one-shot parser of the fake CLI.
#[derive(Default)]
struct FakeParser {
    saw_error: bool,
}

impl LineParser for FakeParser {
    fn parse_line(&mut self, line: &str) -> Vec<Event> {
        let (events, _, _) = read_line(line);
        self.saw_error |= events.iter().any(|e| matches!(e, Event::Error { .. }));
        events
    }

    fn finish(&mut self, exit_code: Option<i32>, stderr_tail: &str) -> Vec<Event> {
        backend::exit_error("fake-cli", self.saw_error, exit_code, stderr_tail)
    }
}

/// Counts a driver alive until it is dropped.
struct Alive(Arc<watch::Sender<usize>>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// The live-mode driver of the fake CLI: `open` at start; a turn is held until the worker says
/// `{"ready": true}`, then written as `turn <prompt>`; `{"end": true}` ends it.
struct FakeDriver {
    open: bool,
    held: Vec<String>,
    in_turn: bool,
    _alive: Alive,
}

impl Driver for FakeDriver {
    fn open(&mut self) -> Vec<String> {
        vec!["open".into()]
    }

    fn turn(&mut self, inv: &Invocation) -> Vec<String> {
        self.in_turn = true;
        let line = format!("turn {}", inv.prompt);
        if self.open {
            vec![line]
        } else {
            self.held.push(line);
            vec![]
        }
    }

    fn on_line(&mut self, line: &str) -> Step {
        let (events, ready, end) = read_line(line);
        let mut write = Vec::new();
        if ready {
            self.open = true;
            write = std::mem::take(&mut self.held);
        }
        if end {
            self.in_turn = false;
        }
        Step { events, write, end }
    }

    fn key(&self) -> String {
        "fake".into()
    }

    fn accepts(&self, _inv: &Invocation) -> bool {
        true
    }

    /// Like the real drivers: a turn not sent yet cannot be interrupted (the worker is stopped).
    fn interrupt(&mut self) -> Option<Vec<String>> {
        (self.in_turn && self.held.is_empty()).then(|| vec!["interrupt".to_string()])
    }
}

mod tests {
    use super::*;

    #[test]
    fn the_fake_cli_lines() {
        let (ev, ready, end) = read_line(r#"{"session":"s","text":"hi"}"#);
        assert_eq!(
            ev,
            vec![
                Event::SessionStarted {
                    session_id: "s".into(),
                    model: None
                },
                Event::TextDelta { text: "hi".into() }
            ]
        );
        assert!(!ready && !end);
        assert_eq!(read_line(r#"{"ready":true}"#), (vec![], true, false));
        assert_eq!(read_line(r#"{"end":true}"#), (vec![], false, true));
        assert!(matches!(
            read_line("garbage").0[..],
            [Event::Unparsed { .. }]
        ));
    }

    #[test]
    fn the_fake_driver_holds_a_turn_until_the_session_is_open() {
        let fake = FakeAdapter::new().leak();
        let inv = Invocation {
            prompt: "p".into(),
            ..Default::default()
        };
        let mut d = fake.live(&inv, &BackendSettings::default()).unwrap().driver;
        assert_eq!(fake.live_drivers(), 1);
        assert_eq!(d.open(), vec!["open"]);
        assert!(d.turn(&inv).is_empty(), "held while opening");
        assert_eq!(d.interrupt(), None, "not sent yet");
        assert_eq!(d.on_line(r#"{"ready":true}"#).write, vec!["turn p"]);
        assert_eq!(d.interrupt(), Some(vec!["interrupt".to_string()]));
        let step = d.on_line(r#"{"text":"x","end":true}"#);
        assert!(step.end);
        assert_eq!(step.events, vec![Event::TextDelta { text: "x".into() }]);
        assert_eq!(d.interrupt(), None, "no turn runs");
        drop(d);
        assert_eq!(fake.live_drivers(), 0);
    }

    #[test]
    fn a_test_context_lives_in_its_own_folder() {
        let ctx = Ctx::for_tests(|s| s.server.request_timeout_secs = 7);
        let root = ctx.test_dir().to_path_buf();
        assert!(ctx.paths.state_dir.starts_with(&root));
        assert!(crate::engine::default_workdir(&ctx).is_dir());
        assert_eq!(ctx.settings().server.request_timeout_secs, 7);
        // Every backend has a fake behind it, never the real CLI.
        for b in Backend::ALL {
            assert_eq!(
                ctx.adapter(b).builtin_extra_allowlist(),
                &["--add-dir", "--fake-switch"]
            );
        }
        let clone = ctx.clone();
        drop(ctx);
        assert!(root.is_dir(), "kept while a clone lives");
        drop(clone);
        assert!(!root.exists(), "removed with the last clone");
    }
}
