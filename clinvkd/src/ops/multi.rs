//! `parallel`, `chain` and `compare`: several prompts, built on `prompt`.

use super::prompt::{self, PromptRequest, PromptResult};
use super::Caller;
use crate::ctx::Ctx;
use crate::error::ApiError;
use clinvk_shared::api::ApiStyle;
use clinvk_shared::api::{
    Backend, ChainRequest, ChainResult, ChainStepResult, CompareEntry, CompareRequest,
    CompareResult, ParallelRequest, ParallelResult, PromptOutcome, StepOutcome, TaskDone,
};
use std::time::Instant;

/// A failed result for a task that could not run.
fn error_result(backend: Backend, message: String) -> PromptOutcome {
    PromptOutcome::Result(PromptResult {
        backend,
        exit_code: -1,
        error: Some(message),
        ..Default::default()
    })
}

/// Runs one prompt request to its end; a request that cannot start becomes a failed result
/// (of `backend`, the one `check_all` found for it).
async fn run_one(
    ctx: &Ctx,
    caller: &Caller,
    req: PromptRequest,
    backend: Backend,
    dry_run: bool,
) -> PromptOutcome {
    let plan = match prompt::plan(ctx, caller, req, ApiStyle::Native) {
        Ok(mut p) => {
            p.dry_run |= dry_run;
            p
        }
        Err(e) => return error_result(backend, e.message),
    };
    if plan.dry_run {
        return prompt::dry_run(ctx, &plan)
            .map(PromptOutcome::DryRun)
            .unwrap_or_else(|e| error_result(backend, e.message));
    }
    match prompt::start(ctx, plan).await {
        Ok(run) => PromptOutcome::Result(run.finish().await.result),
        Err(e) => error_result(backend, e.message),
    }
}

/// Checks every request before anything runs: a client mistake in one refuses them all,
/// naming it (`tasks[2]: …`). Returns each request's backend.
fn check_all<'a>(
    ctx: &Ctx,
    caller: &Caller,
    what: &str,
    requests: impl IntoIterator<Item = PromptRequest> + 'a,
) -> Result<Vec<Backend>, ApiError> {
    let mut backends = Vec::new();
    for (i, r) in requests.into_iter().enumerate() {
        let plan = prompt::plan(ctx, caller, r, ApiStyle::Native).map_err(|e| ApiError {
            message: format!("{what}[{i}]: {}", e.message),
            ..e
        })?;
        backends.push(plan.inv.backend);
    }
    Ok(backends)
}

/// `POST /api/v1/parallel`: tasks run concurrently (at most `max_parallel`, capped by
/// `limits.max_parallel_per_request`); with `fail_fast` the first failure cancels the rest,
/// which are reported as failed with `error: "cancelled"`. Each finished task is reported on
/// `progress` as it ends.
pub(crate) async fn parallel(
    ctx: &Ctx,
    caller: &Caller,
    req: ParallelRequest,
    progress: Option<tokio::sync::mpsc::UnboundedSender<TaskDone>>,
) -> Result<ParallelResult, ApiError> {
    if req.tasks.is_empty() {
        return Err(
            ApiError::bad_request("missing_field", "`tasks` must hold at least one task")
                .with_param("tasks"),
        );
    }
    let backends = check_all(ctx, caller, "tasks", req.tasks.iter().cloned())?;
    let settings = ctx.settings();
    // The operator's cap wins over the request's (and the configured default).
    let max = req
        .max_parallel
        .unwrap_or(settings.parallel.max_workers)
        .clamp(1, settings.limits.max_parallel_per_request);
    let fail_fast = req.fail_fast.unwrap_or(settings.parallel.fail_fast);
    let total = req.tasks.len();
    let start = Instant::now();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(max));
    let mut set = tokio::task::JoinSet::new();
    for (i, t) in req.tasks.into_iter().enumerate() {
        let ctx = ctx.clone();
        let caller = caller.clone();
        let sem = sem.clone();
        let dry = req.dry_run;
        let backend = backends[i];
        set.spawn(async move {
            let _permit = sem.acquire_owned().await;
            (i, run_one(&ctx, &caller, t, backend, dry).await)
        });
    }
    let mut results: Vec<Option<PromptOutcome>> = vec![None; total];
    while let Some(done) = set.join_next().await {
        let Ok((i, outcome)) = done else { continue };
        let stop = fail_fast && outcome.failed();
        if let Some(p) = &progress {
            let r = outcome.result();
            let _ = p.send(TaskDone {
                index: i,
                total,
                backend: outcome.backend(),
                exit_code: r.map(|r| r.exit_code),
                error: r.and_then(|r| r.error.clone()),
                duration_ms: r.map(|r| r.duration_ms),
            });
        }
        results[i] = Some(outcome);
        if stop {
            set.abort_all(); // dropping the runs kills their process groups
            while set.join_next().await.is_some() {}
            break;
        }
    }
    let results: Vec<PromptOutcome> = results
        .into_iter()
        .enumerate()
        .map(|(i, r)| r.unwrap_or_else(|| error_result(backends[i], "cancelled".into())))
        .collect();
    let failed = results.iter().filter(|r| r.failed()).count();
    Ok(ParallelResult {
        total_tasks: total,
        completed: total - failed,
        failed,
        total_duration_ms: start.elapsed().as_millis() as u64,
        results,
    })
}

/// `POST /api/v1/chain`: steps in order; `{{previous}}` in a step's prompt becomes the previous
/// step's output.
pub(crate) async fn chain(
    ctx: &Ctx,
    caller: &Caller,
    req: ChainRequest,
) -> Result<ChainResult, ApiError> {
    if req.steps.is_empty() {
        return Err(
            ApiError::bad_request("missing_field", "`steps` must hold at least one step")
                .with_param("steps"),
        );
    }
    let backends = check_all(
        ctx,
        caller,
        "steps",
        req.steps.iter().map(|s| {
            let mut r = s.request.clone();
            r.prompt = r.prompt.map(|p| p.replace("{{previous}}", "x"));
            r
        }),
    )?;
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
        let backend = backends[i];
        let outcome = StepOutcome::from(&run_one(ctx, caller, r, backend, req.dry_run).await);
        let is_failed = outcome.failed();
        previous = outcome.output.clone().unwrap_or_default();
        previous_workdir = workdir.or(previous_workdir);
        results.push(ChainStepResult {
            step: i + 1,
            name: step.name.unwrap_or_else(|| format!("step-{}", i + 1)),
            backend,
            outcome,
        });
        if is_failed {
            failed_step.get_or_insert(i + 1);
            if stop_on_failure {
                break;
            }
        }
    }
    let completed = results.iter().filter(|r| !r.outcome.failed()).count();
    Ok(ChainResult {
        total_steps: results.len().max(completed),
        completed_steps: completed,
        failed_step,
        total_duration_ms: start.elapsed().as_millis() as u64,
        results,
    })
}

/// `POST /api/v1/compare`: one prompt on several backends.
pub(crate) async fn compare(
    ctx: &Ctx,
    caller: &Caller,
    req: CompareRequest,
) -> Result<CompareResult, ApiError> {
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
    let backends = check_all(ctx, caller, "backends", req.backends.iter().map(make))?;
    let start = Instant::now();
    let runs: Vec<PromptOutcome> = if req.sequential {
        let mut v = Vec::new();
        for (b, &backend) in req.backends.iter().zip(&backends) {
            v.push(run_one(ctx, caller, make(b), backend, req.dry_run).await);
        }
        v
    } else {
        futures::future::join_all(
            req.backends
                .iter()
                .zip(&backends)
                .map(|(b, &backend)| run_one(ctx, caller, make(b), backend, req.dry_run)),
        )
        .await
    };
    let results = backends
        .iter()
        .zip(runs)
        .map(|(&backend, o)| CompareEntry {
            backend,
            model: req.model.clone(),
            outcome: StepOutcome::from(&o),
        })
        .collect();
    Ok(CompareResult {
        prompt: req.prompt.clone(),
        backends: req.backends.clone(),
        results,
        total_duration_ms: start.elapsed().as_millis() as u64,
    })
}
