//! `parallel`, `chain` and `compare`: several prompts, built on `prompt`.

use super::prompt::{self, PromptRequest, PromptResult};
use super::{parse_body, Caller};
use crate::ctx::Ctx;
use crate::error::ApiError;
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Instant;

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct ParallelRequest {
    tasks: Vec<PromptRequest>,
    max_parallel: Option<usize>,
    fail_fast: Option<bool>,
    dry_run: bool,
}

fn task_json(r: &PromptResult) -> Value {
    serde_json::to_value(r).unwrap_or_default()
}

fn error_result(backend: &str, message: String) -> PromptResult {
    PromptResult {
        backend: backend.to_string(),
        exit_code: -1,
        error: Some(message),
        ..Default::default()
    }
}

/// Runs one prompt request to its end; a request that cannot start becomes a failed result.
async fn run_one(ctx: &Ctx, caller: &Caller, req: PromptRequest, dry_run: bool) -> Value {
    let backend = req.backend.clone().unwrap_or_default();
    let plan = match prompt::plan(ctx, caller, req, "native") {
        Ok(mut p) => {
            p.dry_run |= dry_run;
            p
        }
        Err(e) => return task_json(&error_result(&backend, e.message)),
    };
    if plan.dry_run {
        return prompt::dry_run_json(ctx, &plan)
            .unwrap_or_else(|e| task_json(&error_result(&backend, e.message)));
    }
    match prompt::start(ctx, plan).await {
        Ok(run) => task_json(&run.finish().await),
        Err(e) => task_json(&error_result(&backend, e.message)),
    }
}

fn failed(v: &Value) -> bool {
    !v["error"].is_null() || v["exit_code"].as_i64().is_some_and(|c| c != 0)
}

/// `POST /api/v1/parallel`: tasks run concurrently (at most `max_parallel`); with `fail_fast`
/// the first failure cancels the rest, which are reported as failed with `error: "cancelled"`.
pub async fn parallel(ctx: &Ctx, caller: &Caller, body: &[u8]) -> Result<Value, ApiError> {
    parallel_with_progress(ctx, caller, body, None).await
}

/// `parallel`, reporting each finished task on `progress` (`{"type":"task_done","index",…}`).
pub async fn parallel_with_progress(
    ctx: &Ctx,
    caller: &Caller,
    body: &[u8],
    progress: Option<tokio::sync::mpsc::UnboundedSender<Value>>,
) -> Result<Value, ApiError> {
    let req: ParallelRequest = parse_body(body)?;
    if req.tasks.is_empty() {
        return Err(
            ApiError::bad_request("missing_field", "`tasks` must hold at least one task")
                .with_param("tasks"),
        );
    }
    // Client mistakes in any task are refused before anything runs.
    for (i, t) in req.tasks.iter().enumerate() {
        prompt::plan(ctx, caller, t.clone(), "native").map_err(|e| ApiError {
            message: format!("tasks[{i}]: {}", e.message),
            ..e
        })?;
    }
    let settings = ctx.settings();
    // The operator's cap wins over the request's (and the configured default).
    let max = req
        .max_parallel
        .unwrap_or(settings.parallel.max_workers)
        .clamp(1, settings.limits.max_parallel_per_request);
    let fail_fast = req.fail_fast.unwrap_or(settings.parallel.fail_fast);
    let total = req.tasks.len();
    let backends: Vec<String> = req
        .tasks
        .iter()
        .map(|t| t.backend.clone().unwrap_or_default())
        .collect();
    let start = Instant::now();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(max));
    let mut set = tokio::task::JoinSet::new();
    for (i, t) in req.tasks.into_iter().enumerate() {
        let ctx = ctx.clone();
        let caller = caller.clone();
        let sem = sem.clone();
        let dry = req.dry_run;
        set.spawn(async move {
            let _permit = sem.acquire_owned().await;
            (i, run_one(&ctx, &caller, t, dry).await)
        });
    }
    let mut results: Vec<Option<Value>> = vec![None; total];
    while let Some(done) = set.join_next().await {
        let Ok((i, v)) = done else { continue };
        let stop = fail_fast && failed(&v);
        if let Some(p) = &progress {
            let _ = p.send(json!({
                "type": "task_done", "index": i, "total": total, "backend": v["backend"],
                "exit_code": v["exit_code"], "error": v["error"], "duration_ms": v["duration_ms"],
            }));
        }
        results[i] = Some(v);
        if stop {
            set.abort_all(); // dropping the runs kills their process groups
            while set.join_next().await.is_some() {}
            break;
        }
    }
    let results: Vec<Value> = results
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            r.unwrap_or_else(|| task_json(&error_result(&backends[i], "cancelled".into())))
        })
        .collect();
    let failed_count = results.iter().filter(|v| failed(v)).count();
    Ok(json!({
        "total_tasks": total,
        "completed": total - failed_count,
        "failed": failed_count,
        "total_duration_ms": start.elapsed().as_millis() as u64,
        "results": results,
    }))
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct ChainStep {
    name: Option<String>,
    #[serde(flatten)]
    request: PromptRequest,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct ChainRequest {
    steps: Vec<ChainStep>,
    stop_on_failure: Option<bool>,
    pass_working_dir: bool,
    dry_run: bool,
}

/// `POST /api/v1/chain`: steps in order; `{{previous}}` in a step's prompt becomes the previous
/// step's output.
pub async fn chain(ctx: &Ctx, caller: &Caller, body: &[u8]) -> Result<Value, ApiError> {
    let req: ChainRequest = parse_body(body)?;
    if req.steps.is_empty() {
        return Err(
            ApiError::bad_request("missing_field", "`steps` must hold at least one step")
                .with_param("steps"),
        );
    }
    for (i, s) in req.steps.iter().enumerate() {
        let mut r = s.request.clone();
        r.prompt = r.prompt.map(|p| p.replace("{{previous}}", "x"));
        prompt::plan(ctx, caller, r, "native").map_err(|e| ApiError {
            message: format!("steps[{i}]: {}", e.message),
            ..e
        })?;
    }
    let stop_on_failure = req.stop_on_failure.unwrap_or(true);
    let start = Instant::now();
    let mut previous = String::new();
    let mut previous_workdir: Option<String> = None;
    let mut results = Vec::new();
    let mut failed_step: Option<usize> = None;
    for (i, step) in req.steps.into_iter().enumerate() {
        let mut r = step.request;
        r.prompt = r.prompt.map(|p| p.replace("{{previous}}", &previous));
        if req.pass_working_dir && r.workdir.is_none() {
            r.workdir = previous_workdir.clone();
        }
        let workdir = r.workdir.clone();
        let backend = r.backend.clone().unwrap_or_default();
        let v = run_one(ctx, caller, r, req.dry_run).await;
        let is_failed = failed(&v);
        previous = v["output"].as_str().unwrap_or_default().to_string();
        previous_workdir = workdir.or(previous_workdir);
        results.push(json!({
            "step": i + 1,
            "name": step.name.unwrap_or_else(|| format!("step-{}", i + 1)),
            "backend": backend,
            "exit_code": v["exit_code"],
            "error": v["error"],
            "duration_ms": v["duration_ms"],
            "output": v["output"],
            "session_id": v["session_id"],
            "command": v["command"],
        }));
        if is_failed {
            failed_step.get_or_insert(i + 1);
            if stop_on_failure {
                break;
            }
        }
    }
    let completed = results.iter().filter(|v| !failed(v)).count();
    Ok(json!({
        "total_steps": results.len().max(completed),
        "completed_steps": completed,
        "failed_step": failed_step,
        "total_duration_ms": start.elapsed().as_millis() as u64,
        "results": results,
    }))
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct CompareRequest {
    backends: Vec<String>,
    prompt: Option<String>,
    model: Option<String>,
    workdir: Option<String>,
    sequential: bool,
    dry_run: bool,
    ephemeral: bool,
}

/// `POST /api/v1/compare`: one prompt on several backends.
pub async fn compare(ctx: &Ctx, caller: &Caller, body: &[u8]) -> Result<Value, ApiError> {
    let req: CompareRequest = parse_body(body)?;
    if req.backends.is_empty() {
        return Err(ApiError::bad_request(
            "missing_field",
            "`backends` must name at least one backend",
        )
        .with_param("backends"));
    }
    let make = |b: &String| PromptRequest {
        backend: Some(b.clone()),
        prompt: req.prompt.clone(),
        model: req.model.clone(),
        workdir: req.workdir.clone(),
        ephemeral: req.ephemeral,
        ..Default::default()
    };
    for b in &req.backends {
        prompt::plan(ctx, caller, make(b), "native")?;
    }
    let start = Instant::now();
    let runs: Vec<Value> = if req.sequential {
        let mut v = Vec::new();
        for b in &req.backends {
            v.push(run_one(ctx, caller, make(b), req.dry_run).await);
        }
        v
    } else {
        futures::future::join_all(
            req.backends
                .iter()
                .map(|b| run_one(ctx, caller, make(b), req.dry_run)),
        )
        .await
    };
    let results: Vec<Value> = req
        .backends
        .iter()
        .zip(runs)
        .map(|(b, v)| {
            json!({
                "backend": b, "model": req.model, "exit_code": v["exit_code"], "error": v["error"],
                "duration_ms": v["duration_ms"], "output": v["output"], "session_id": v["session_id"],
                "command": v["command"],
            })
        })
        .collect();
    Ok(json!({
        "prompt": req.prompt,
        "backends": req.backends,
        "results": results,
        "total_duration_ms": start.elapsed().as_millis() as u64,
    }))
}
