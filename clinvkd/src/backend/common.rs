//! Helpers shared by the three adapters: resolving an invocation against the backend's
//! settings, checking the request's `extra` flags, and making CLI error text readable.

use clinvk_shared::config::BackendSettings;
use serde_json::Value;

use super::{ApprovalMode, ArgvError, Invocation, SandboxMode};

/// Longest error message taken from a CLI's stderr.
const MAX_ERROR_CHARS: usize = 4000;

/// An invocation with the backend's settings applied and every value checked.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Resolved {
    pub prompt: String,
    pub model: Option<String>,
    pub approval: ApprovalMode,
    pub sandbox: SandboxMode,
    pub system_prompt: Option<String>,
    pub resume: Option<String>,
    /// Only when not resuming.
    pub new_session_id: Option<String>,
    pub max_turns: Option<u32>,
    /// The request's extra flags, checked and normalised (`--flag` or `--flag=value`).
    pub extra: Vec<String>,
}

/// Which of an adapter's allowlisted flags take no value.
pub(crate) struct ExtraRules {
    pub allowed: &'static [&'static str],
    pub no_value: &'static [&'static str],
}

pub(crate) fn resolve(
    backend: &str,
    inv: &Invocation,
    cfg: &BackendSettings,
    rules: &ExtraRules,
) -> Result<Resolved, ArgvError> {
    if inv.prompt.trim().is_empty() {
        return Err(ArgvError::Invalid("the prompt is empty".into()));
    }
    no_nul("prompt", &inv.prompt)?;

    let model = inv
        .model
        .as_deref()
        .or(cfg.model.as_deref())
        .map(str::trim)
        .filter(|m| {
            !m.is_empty() && !m.eq_ignore_ascii_case(backend) && !m.eq_ignore_ascii_case("default")
        })
        .map(str::to_string);
    if let Some(m) = &model {
        no_nul("model", m)?;
        if m.starts_with('-') || m.chars().any(char::is_whitespace) {
            return Err(ArgvError::Invalid(format!("invalid model name {m:?}")));
        }
    }

    let approval = match inv.approval_mode {
        ApprovalMode::Default => match cfg.approval_mode.as_deref() {
            Some(s) => s.parse()?,
            None => ApprovalMode::Default,
        },
        m => m,
    };
    let sandbox = match inv.sandbox_mode {
        SandboxMode::Default => match cfg.sandbox_mode.as_deref() {
            Some(s) => s.parse()?,
            None => SandboxMode::Default,
        },
        m => m,
    };

    let system_prompt = inv
        .system_prompt
        .as_deref()
        .or(cfg.system_prompt.as_deref())
        .filter(|s| !s.trim().is_empty())
        .map(str::to_string);
    if let Some(s) = &system_prompt {
        no_nul("system prompt", s)?;
    }

    // Session ids are UUIDs for all three CLIs. Anything else would be taken as a session
    // *name*, an index or `latest` (codex silently starts a new thread for an unknown name).
    let resume = match inv.resume.as_deref().map(str::trim) {
        Some(id) => Some(uuid_arg("session id to resume", id)?),
        None => None,
    };
    let new_session_id = match (&resume, inv.new_session_id.as_deref().map(str::trim)) {
        (None, Some(id)) => Some(uuid_arg("new session id", id)?),
        _ => None,
    };

    if inv.max_turns == Some(0) {
        return Err(ArgvError::Invalid("max_turns must be at least 1".into()));
    }

    let extra = check_extra(&inv.extra, rules, &cfg.allowed_extra_flags)?;

    Ok(Resolved {
        prompt: inv.prompt.clone(),
        model,
        approval,
        sandbox,
        system_prompt,
        resume,
        new_session_id,
        max_turns: inv.max_turns,
        extra,
    })
}

fn no_nul(what: &str, s: &str) -> Result<(), ArgvError> {
    if s.contains('\0') {
        Err(ArgvError::Invalid(format!(
            "the {what} contains a NUL byte"
        )))
    } else {
        Ok(())
    }
}

fn uuid_arg(what: &str, id: &str) -> Result<String, ArgvError> {
    // Only the hyphenated form: the CLIs print and store that one.
    match uuid::Uuid::parse_str(id) {
        Ok(_) if id.len() == 36 => Ok(id.to_string()),
        _ => Err(ArgvError::Invalid(format!(
            "the {what} {id:?} is not a UUID"
        ))),
    }
}

fn normalise_flag(entry: &str) -> String {
    let e = entry.trim();
    if e.starts_with('-') {
        e.to_string()
    } else {
        format!("--{e}")
    }
}

/// Checks a request's `extra` flags against the adapter's allowlist and the backend's
/// `allowed_extra_flags`. Accepts `--flag`, `--flag=value` and `--flag value`; anything else
/// (a bare word, `--`, a flag not on a list) is refused with the offending element. Long flags
/// come out as one element (`--flag=value`), so a value can never be read as a flag or as a
/// positional argument by the CLI.
pub(crate) fn check_extra(
    extra: &[String],
    rules: &ExtraRules,
    cfg_allowed: &[String],
) -> Result<Vec<String>, ArgvError> {
    let mut out = Vec::with_capacity(extra.len());
    let mut i = 0;
    while i < extra.len() {
        let item = &extra[i];
        i += 1;
        no_nul("extra flag", item)?;
        if !item.starts_with('-') || item == "-" || item == "--" {
            return Err(ArgvError::DisallowedFlag(item.clone()));
        }
        let (name, inline_value) = match item.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (item.as_str(), None),
        };
        let builtin = rules.allowed.contains(&name);
        let configured = cfg_allowed.iter().any(|a| normalise_flag(a) == name);
        if !builtin && !configured {
            return Err(ArgvError::DisallowedFlag(name.to_string()));
        }
        let short = !name.starts_with("--");
        if builtin && rules.no_value.contains(&name) {
            if inline_value.is_some() {
                return Err(ArgvError::Invalid(format!("{name} takes no value")));
            }
            out.push(name.to_string());
            continue;
        }
        let value = match inline_value {
            Some(v) => Some(v.to_string()),
            None => match extra.get(i) {
                Some(next) if !next.starts_with('-') => {
                    i += 1;
                    no_nul("extra flag", next)?;
                    Some(next.clone())
                }
                _ if builtin => return Err(ArgvError::Invalid(format!("{name} needs a value"))),
                // A configured flag of unknown kind: taken as a switch.
                _ => None,
            },
        };
        match value {
            Some(v) if short => {
                out.push(name.to_string());
                out.push(v);
            }
            Some(v) => out.push(format!("{name}={v}")),
            None => out.push(name.to_string()),
        }
    }
    Ok(out)
}

/// Linux refuses to start a program with an argument of 128 KiB or more (`MAX_ARG_STRLEN`,
/// counting the terminating NUL): the prompt is one argument, so this bounds its size.
pub(crate) const MAX_ARG_BYTES: usize = 128 * 1024 - 1;

/// Refuses argv the OS would refuse at spawn time, with a message that says why.
pub(crate) fn check_arg_lengths(args: &[String]) -> Result<(), ArgvError> {
    match args.iter().find(|a| a.len() > MAX_ARG_BYTES) {
        Some(a) => Err(ArgvError::Invalid(format!(
            "an argument of {} bytes is too long for the command line (at most {MAX_ARG_BYTES} \
             bytes each; the prompt and the system prompt are passed as arguments)",
            a.len()
        ))),
        None => Ok(()),
    }
}

/// `--flag=value` for an option the CLI parses as a list (so it cannot swallow what follows).
pub(crate) fn joined(flag: &str, value: &str) -> String {
    format!("{flag}={value}")
}

pub(crate) fn config_env(cfg: &BackendSettings) -> Vec<(String, String)> {
    cfg.env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

// ---- parsing helpers ----

/// The line as a JSON object, or None when it is anything else.
pub(crate) fn json_object(line: &str) -> Option<serde_json::Map<String, Value>> {
    match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    }
}

pub(crate) fn str_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

pub(crate) fn u64_of(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// A tool result's content as text: a string, or the text parts of a list of blocks.
pub(crate) fn content_text(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|b| match b {
                Value::String(s) => s.clone(),
                _ => match str_of(b, "text") {
                    Some(t) => t.to_string(),
                    None => format!("[{}]", str_of(b, "type").unwrap_or("content")),
                },
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Some(other) => other.to_string(),
    }
}

/// Makes a CLI's error message readable: when it wraps an API error body
/// (`{"error":{"message":…,"code":…}}`), says the inner message and its code/status.
pub(crate) fn humanize_error(msg: &str) -> String {
    let t = msg.trim();
    let (Some(a), Some(b)) = (t.find('{'), t.rfind('}')) else {
        return t.to_string();
    };
    if a >= b {
        return t.to_string();
    }
    let Ok(v) = serde_json::from_str::<Value>(&t[a..=b]) else {
        return t.to_string();
    };
    let e = v.get("error").filter(|e| e.is_object()).unwrap_or(&v);
    let Some(inner) = str_of(e, "message") else {
        return t.to_string();
    };
    let unwrapped = humanize_error(inner);
    let mut tags = Vec::new();
    // A wrapped body already carries its own code; the wrapper's would repeat it.
    if unwrapped == inner.trim() {
        for key in ["code", "status"] {
            match e.get(key) {
                Some(Value::String(s)) if !s.is_empty() => tags.push(s.clone()),
                Some(Value::Number(n)) => tags.push(n.to_string()),
                _ => {}
            }
        }
        if tags.is_empty() {
            if let Some(ty) = str_of(e, "type").filter(|s| !s.is_empty()) {
                tags.push(ty.to_string());
            }
        }
    }
    let inner = unwrapped;
    let prefix = t[..a]
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(':')
        .trim();
    let mut out = if prefix.is_empty() {
        inner
    } else {
        format!("{prefix}: {inner}")
    };
    if !tags.is_empty() {
        out.push_str(&format!(" ({})", tags.join(" ")));
    }
    out
}

/// Lines of stderr that never explain a failure.
const STDERR_NOISE: &[&str] = &[
    "Reading additional input from stdin",
    "256-color support not detected",
    "Ripgrep is not available",
    "could not find bubblewrap",
    "Loaded cached credentials",
];

/// The useful part of a CLI's stderr: colours, stack traces, backtraces and known warnings
/// removed, cut to a sane length.
pub(crate) fn stderr_summary(stderr: &str) -> String {
    let clean = strip_ansi(stderr);
    let mut lines = Vec::new();
    for raw in clean.lines() {
        let line = raw.trim_end_matches('\r');
        let t = line.trim();
        if t == "Stack backtrace:" {
            break;
        }
        let js_frame = t.starts_with("at ") && raw.starts_with(char::is_whitespace);
        let rust_frame = t
            .split_once(": ")
            .is_some_and(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
            && raw.starts_with(char::is_whitespace);
        if t.is_empty() || js_frame || rust_frame || STDERR_NOISE.iter().any(|n| t.contains(n)) {
            continue;
        }
        lines.push(line.trim_end());
    }
    truncate_chars(&lines.join("\n"), MAX_ERROR_CHARS)
}

pub(crate) fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'[') {
            chars.next();
            // CSI: parameters and intermediates up to a final byte in @..~
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else {
            chars.next();
        }
    }
    out
}

/// The last top-level JSON object in `text` that has an `error` member (gemini prints its
/// error object, pretty-printed, at the end of stderr in json mode).
pub(crate) fn last_json_error(text: &str) -> Option<Value> {
    let mut found = None;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if line.starts_with('{') {
            let mut stream =
                serde_json::Deserializer::from_str(&text[offset..]).into_iter::<Value>();
            if let Some(Ok(v)) = stream.next() {
                if v.get("error").is_some() {
                    found = Some(v);
                }
            }
        }
        offset += line.len();
    }
    found
}

/// The message for a failed exit that produced no error event. It does not name the CLI:
/// the engine puts the backend's name in front of every error.
pub(crate) fn exit_error(exit_code: Option<i32>, stderr_tail: &str) -> String {
    let summary = stderr_summary(stderr_tail);
    if !summary.is_empty() {
        return summary;
    }
    match exit_code {
        Some(c) => format!("the process exited with code {c} and no error message"),
        None => "the process was killed by a signal".to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    const RULES: ExtraRules = ExtraRules {
        allowed: &["--effort", "--fork-session"],
        no_value: &["--fork-session"],
    };

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn extra_flags() {
        let ok = check_extra(
            &s(&["--effort", "high", "--fork-session", "--effort=low"]),
            &RULES,
            &[],
        )
        .unwrap();
        assert_eq!(ok, s(&["--effort=high", "--fork-session", "--effort=low"]));
        // A value that looks like a flag is not taken as a value.
        assert_eq!(
            check_extra(&s(&["--effort", "--fork-session"]), &RULES, &[]),
            Err(ArgvError::Invalid("--effort needs a value".into()))
        );
        assert_eq!(
            check_extra(&s(&["--model", "x"]), &RULES, &[]),
            Err(ArgvError::DisallowedFlag("--model".into()))
        );
        assert_eq!(
            check_extra(&s(&["--model=x"]), &RULES, &[]),
            Err(ArgvError::DisallowedFlag("--model".into()))
        );
        assert_eq!(
            check_extra(&s(&["hello"]), &RULES, &[]),
            Err(ArgvError::DisallowedFlag("hello".into()))
        );
        assert_eq!(
            check_extra(&s(&["--"]), &RULES, &[]),
            Err(ArgvError::DisallowedFlag("--".into()))
        );
        // A switch followed by a bare word: the word is refused, not smuggled in.
        assert_eq!(
            check_extra(&s(&["--fork-session", "resume"]), &RULES, &[]),
            Err(ArgvError::DisallowedFlag("resume".into()))
        );
        assert_eq!(
            check_extra(&s(&["--fork-session=1"]), &RULES, &[]),
            Err(ArgvError::Invalid("--fork-session takes no value".into()))
        );
        // Configured flags, with or without dashes in the config.
        let cfg = s(&["model", "--debug", "-x"]);
        assert_eq!(
            check_extra(&s(&["--model", "m1", "--debug", "-x", "v"]), &RULES, &cfg).unwrap(),
            s(&["--model=m1", "--debug", "-x", "v"])
        );
        assert!(check_extra(&s(&["--effort", "a\0b"]), &RULES, &[]).is_err());
        assert_eq!(check_extra(&[], &RULES, &[]).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn argument_size_limit() {
        assert!(check_arg_lengths(&["a".repeat(MAX_ARG_BYTES)]).is_ok());
        let e = check_arg_lengths(&["-p".into(), "a".repeat(MAX_ARG_BYTES + 1)]).unwrap_err();
        assert!(e.to_string().contains("131072 bytes is too long"), "{e}");
    }

    #[test]
    fn humanize() {
        assert_eq!(
            humanize_error(
                r#"{"error": {"message": "fakemodel: injected error [[error]]", "type": "invalid_request_error", "param": null, "code": "invalid_request"}}"#
            ),
            "fakemodel: injected error [[error]] (invalid_request)"
        );
        assert_eq!(
            humanize_error(
                r#"[API Error: {"error":{"code":400,"message":"boom","status":"INVALID_ARGUMENT"}}]"#
            ),
            "API Error: boom (400 INVALID_ARGUMENT)"
        );
        assert_eq!(humanize_error(" plain text "), "plain text");
        assert_eq!(humanize_error("a } b { c"), "a } b { c");
        assert_eq!(humanize_error("x {not json}"), "x {not json}");
    }

    #[test]
    fn stderr_cleanup() {
        let codex = include_str!("../../tests/fixtures/codex-0.169.0-badresume.stderr");
        assert_eq!(
            stderr_summary(codex),
            "Error: thread/resume: thread/resume failed: no rollout found for thread id 00000000-0000-4000-8000-00000000dead (code -32600)"
        );
        assert_eq!(
            stderr_summary(
                "\u{1b}[31mred error\u{1b}[0m\nReading additional input from stdin...\n"
            ),
            "red error"
        );
        assert_eq!(stderr_summary(""), "");
        let long = "x".repeat(10_000);
        assert_eq!(stderr_summary(&long).chars().count(), MAX_ERROR_CHARS + 1);
        assert_eq!(
            exit_error(Some(3), ""),
            "the process exited with code 3 and no error message"
        );
        assert_eq!(exit_error(None, "  "), "the process was killed by a signal");
    }

    #[test]
    fn json_error_in_stderr() {
        let stderr = include_str!("../../tests/fixtures/gemini-0.61.0-error-json.stderr");
        let v = last_json_error(stderr).unwrap();
        assert_eq!(v["session_id"], "c7b885c1-92b4-40ec-a983-e9accfad39df");
        assert!(last_json_error("no json here\n{broken").is_none());
        assert!(last_json_error("{\"ok\":1}\n").is_none());
    }
}
