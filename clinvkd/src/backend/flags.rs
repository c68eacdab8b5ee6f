//! A request's extra CLI flags: checked against the allow-lists (each adapter's built-in one
//! plus `backends.<name>.allowed_extra_flags`), and the folders they name.

use super::*;

/// Flags whose value is a folder: a request's value passes the workdir policy.
pub(crate) const FOLDER_FLAGS: [&str; 4] = ["--add-dir", "--include-directories", "-C", "--cd"];

/// Flags of the CLIs known to take a value (so an allow-list entry without `<value>` still
/// takes one); any other flag is a switch.
const VALUE_FLAGS: [&str; 22] = [
    "--add-dir",
    "--allowedTools",
    "--allowed-tools",
    "--disallowedTools",
    "--disallowed-tools",
    "--permission-mode",
    "--append-system-prompt",
    "--fallback-model",
    "--include-directories",
    "--allowed-mcp-server-names",
    "--extensions",
    "-e",
    "--mcp-config",
    "--settings",
    "--model",
    "-m",
    "-c",
    "--config",
    "--profile",
    "-C",
    "--cd",
    "--max-turns",
];

/// One allow-list entry: `--flag` (a switch, unless the CLI's flag is known to take a value) or
/// `--flag <value>` (takes a value).
pub(super) fn allow_entry(entry: &str) -> (&str, bool) {
    match entry.trim().split_once(char::is_whitespace) {
        Some((flag, _)) => (flag, true),
        None => (entry.trim(), VALUE_FLAGS.contains(&entry.trim())),
    }
}

/// Checks a request's extra flags against the allowlist (built-in plus
/// `backends.<name>.allowed_extra_flags`): every token is an allowed flag, `--flag=value` of an
/// allowed flag that takes a value, or the value right after such a flag. A value never starts
/// with `-`, so nothing can be smuggled in as a positional argument or a second flag.
pub(crate) fn check_extra(
    extra: &[String],
    builtin: &[&str],
    cfg: &BackendSettings,
) -> Result<Vec<String>, ArgvError> {
    let entries: Vec<(&str, bool)> = builtin
        .iter()
        .copied()
        .chain(cfg.allowed_extra_flags.iter().map(String::as_str))
        .map(allow_entry)
        .collect();
    let lookup = |f: &str| entries.iter().find(|(n, _)| *n == f).map(|(_, v)| *v);
    let refuse = |tok: &str| {
        let list: Vec<&str> = entries.iter().map(|(n, _)| *n).collect();
        ArgvError::DisallowedFlag(
            tok.to_string(),
            if list.is_empty() {
                "none; an operator may allow flags with backends.<name>.allowed_extra_flags".into()
            } else {
                list.join(", ")
            },
        )
    };
    let mut wants_value = false;
    for tok in extra {
        if wants_value {
            if tok.starts_with('-') || tok.is_empty() {
                return Err(ArgvError::Invalid(format!(
                    "`extra`: {tok:?} is not a valid value for the flag before it"
                )));
            }
            wants_value = false;
            continue;
        }
        if !tok.starts_with('-') {
            return Err(refuse(tok));
        }
        match tok.split_once('=') {
            Some((name, _)) => match lookup(name) {
                Some(true) => {}
                _ => return Err(refuse(tok)),
            },
            None => match lookup(tok) {
                Some(v) => wants_value = v,
                None => return Err(refuse(tok)),
            },
        }
    }
    if wants_value {
        return Err(ArgvError::Invalid(
            "`extra` ends with a flag that needs a value".into(),
        ));
    }
    Ok(extra.to_vec())
}

/// The folder values of a checked `extra` list (`--add-dir D`, `--add-dir=D`, …).
pub(crate) fn extra_folders(extra: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = extra.iter().peekable();
    while let Some(tok) = it.next() {
        if let Some((name, v)) = tok.split_once('=') {
            if FOLDER_FLAGS.contains(&name) {
                out.push(v.to_string());
            }
        } else if FOLDER_FLAGS.contains(&tok.as_str()) {
            if let Some(v) = it.next() {
                out.push(v.clone());
            }
        }
    }
    out
}
