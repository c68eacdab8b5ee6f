//! `clinvk parallel`, `clinvk chain`, `clinvk compare`: several prompts, run by the daemon.

use crate::{call, exit, print_json, unexpected, ClientError};
use clinvk_shared::api::{
    ChainRequest, ChainStep, CompareRequest, ParallelRequest, PromptRequest, StepOutcome,
};
use clinvk_shared::protocol::{Event, Reply, Request};
use serde::de::DeserializeOwned;

/// Reads a request file: the request object, or a bare array of its items (`wrap` makes the
/// request of those).
fn read_file<T: DeserializeOwned, I: DeserializeOwned>(
    path: &std::path::Path,
    wrap: impl FnOnce(Vec<I>) -> T,
) -> Result<T, ClientError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ClientError::Other(format!("cannot read {}: {e}", path.display())))?;
    let bad = |e: serde_json::Error| ClientError::Other(format!("{}: {e}", path.display()));
    if text.trim_start().starts_with('[') {
        Ok(wrap(serde_json::from_str(&text).map_err(bad)?))
    } else {
        serde_json::from_str(&text).map_err(bad)
    }
}

/// Relative workdirs become absolute; a missing one is the current folder (as for `clinvk "…"`).
fn settle_workdir(r: &mut PromptRequest, fill: bool) -> Result<(), ClientError> {
    match &r.workdir {
        Some(w) => r.workdir = Some(std::path::absolute(w)?.display().to_string()),
        None if fill => r.workdir = Some(std::env::current_dir()?.display().to_string()),
        None => {}
    }
    Ok(())
}

fn line_for(i: usize, label: &str, r: &StepOutcome) -> String {
    let status = match &r.error {
        None => "ok".to_string(),
        Some(e) => format!("FAILED: {e}"),
    };
    format!(
        "[{}] {label} — {status} ({} ms)\n{}",
        i + 1,
        r.duration_ms.unwrap_or(0),
        r.output.as_deref().unwrap_or_default().trim_end()
    )
}

/// One block per result.
fn print_results<'a>(results: impl Iterator<Item = (&'a str, StepOutcome)>) {
    for (i, (label, r)) in results.enumerate() {
        println!("{}\n", line_for(i, label, &r));
    }
}

#[derive(clap::Args, Debug)]
pub struct ParallelArgs {
    /// JSON file: {"tasks": [{"backend", "prompt", …}, …]} or a bare array of tasks
    #[arg(long, short)]
    pub file: std::path::PathBuf,
    #[arg(long)]
    pub max_parallel: Option<usize>,
    /// Cancel the remaining tasks at the first failure
    #[arg(long)]
    pub fail_fast: bool,
    #[arg(long)]
    pub json: bool,
}

pub async fn parallel(args: ParallelArgs) -> Result<u8, ClientError> {
    let paths = crate::paths()?;
    let mut req: ParallelRequest = read_file(&args.file, |tasks| ParallelRequest {
        tasks,
        ..Default::default()
    })?;
    for t in &mut req.tasks {
        settle_workdir(t, true)?;
    }
    if args.max_parallel.is_some() {
        req.max_parallel = args.max_parallel;
    }
    if args.fail_fast {
        req.fail_fast = Some(true);
    }
    let n = req.tasks.len();
    eprintln!("running {n} tasks…");
    let mut done = 0;
    let reply = crate::call_stream(&paths, Request::Parallel(req), |ev| {
        let Event::TaskDone(ev) = ev else { return };
        done += 1;
        let status = match &ev.error {
            None => "ok".to_string(),
            Some(e) => format!("FAILED: {e}"),
        };
        eprintln!(
            "[{done}/{n}] task {} ({}) {status} ({} ms)",
            ev.index + 1,
            ev.backend,
            ev.duration_ms.unwrap_or(0)
        );
    })
    .await?;
    let Reply::Parallel(v) = reply else {
        return Err(unexpected(reply));
    };
    if args.json {
        print_json(&v);
    } else {
        print_results(
            v.results
                .iter()
                .map(|r| (r.backend().as_str(), StepOutcome::from(r))),
        );
        println!(
            "{} of {} tasks completed, {} failed ({} ms)",
            v.completed, v.total_tasks, v.failed, v.total_duration_ms
        );
    }
    Ok(if v.failed > 0 {
        exit::FAILURE
    } else {
        exit::OK
    })
}

#[derive(clap::Args, Debug)]
pub struct ChainArgs {
    /// JSON file: {"steps": [{"name", "backend", "prompt" (may use {{previous}}), …}, …]}
    #[arg(long, short)]
    pub file: std::path::PathBuf,
    #[arg(long)]
    pub json: bool,
}

pub async fn chain(args: ChainArgs) -> Result<u8, ClientError> {
    let paths = crate::paths()?;
    let mut req: ChainRequest = read_file(&args.file, |steps: Vec<ChainStep>| ChainRequest {
        steps,
        ..Default::default()
    })?;
    // With pass_working_dir, later steps inherit the previous step's folder.
    let pass = req.pass_working_dir;
    for (i, s) in req.steps.iter_mut().enumerate() {
        settle_workdir(&mut s.request, i == 0 || !pass)?;
    }
    let v = match call(&paths, Request::Chain(req)).await? {
        Reply::Chain(v) => v,
        other => return Err(unexpected(other)),
    };
    if args.json {
        print_json(&v);
    } else {
        print_results(
            v.results
                .iter()
                .map(|r| (r.name.as_str(), r.outcome.clone())),
        );
        println!("{} of {} steps completed", v.completed_steps, v.total_steps);
    }
    Ok(if v.failed_step.is_none() {
        exit::OK
    } else {
        exit::FAILURE
    })
}

#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// Backends to compare, comma-separated
    #[arg(long, value_delimiter = ',', required_unless_present = "all_backends")]
    pub backends: Vec<String>,
    /// Every available backend
    #[arg(long, conflicts_with = "backends")]
    pub all_backends: bool,
    /// One backend after the other instead of at once
    #[arg(long)]
    pub sequential: bool,
    #[arg(long)]
    pub json: bool,
    pub prompt: String,
}

pub async fn compare(args: CompareArgs) -> Result<u8, ClientError> {
    let paths = crate::paths()?;
    let backends: Vec<String> = if args.all_backends {
        match call(&paths, Request::Backends).await? {
            Reply::Backends(list) => list
                .backends
                .into_iter()
                .filter(|b| b.available)
                .map(|b| b.name.to_string())
                .collect(),
            other => return Err(unexpected(other)),
        }
    } else {
        args.backends
    };
    if backends.is_empty() {
        return Err(ClientError::Other(
            "no backend is available to compare".into(),
        ));
    }
    let req = CompareRequest {
        backends,
        prompt: Some(args.prompt),
        workdir: Some(std::env::current_dir()?.display().to_string()),
        sequential: args.sequential,
        ..Default::default()
    };
    let v = match call(&paths, Request::Compare(req)).await? {
        Reply::Compare(v) => v,
        other => return Err(unexpected(other)),
    };
    if args.json {
        print_json(&v);
    } else {
        print_results(
            v.results
                .iter()
                .map(|r| (r.backend.as_str(), r.outcome.clone())),
        );
    }
    let any_failed = v.results.iter().any(|r| r.outcome.error.is_some());
    Ok(if any_failed { exit::FAILURE } else { exit::OK })
}
