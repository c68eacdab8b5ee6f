//! `parallel`, `chain` and `compare`: several prompts, built on `prompt`.

use super::prompt::{self, Plan, PromptRequest, PromptResult};
use super::Caller;
use crate::ctx::Ctx;
use crate::error::ApiError;
use crate::error::Code;
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

/// Runs one planned prompt to its end; a run that cannot start becomes a failed result.
async fn run_one(ctx: &Ctx, mut plan: Plan, dry_run: bool) -> PromptOutcome {
    let backend = plan.inv.backend;
    plan.dry_run |= dry_run;
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

/// Plans every request, once, before anything runs: a client mistake in one refuses them all,
/// naming it (`tasks[2]: …`).
fn plan_all(
    ctx: &Ctx,
    caller: &Caller,
    what: &str,
    requests: impl IntoIterator<Item = PromptRequest>,
) -> Result<Vec<Plan>, ApiError> {
    requests
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            prompt::Ask::from_request(r, ApiStyle::Native)
                .and_then(|ask| prompt::plan(ctx, caller, ask))
                .map_err(|e| ApiError {
                    message: format!("{what}[{i}]: {}", e.message),
                    ..e
                })
        })
        .collect()
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
        return Err(ApiError::bad_request(
            Code::MissingField,
            "`tasks` must hold at least one task",
        )
        .with_param("tasks"));
    }
    let plans = plan_all(ctx, caller, "tasks", req.tasks)?;
    let backends: Vec<Backend> = plans.iter().map(|p| p.inv.backend).collect();
    let settings = ctx.settings();
    // The operator's caps win over the request's (and the configured default): one request
    // never takes more than half of the concurrency slots.
    let max = settings
        .limits
        .parallel_cap(req.max_parallel.unwrap_or(settings.parallel.max_workers));
    let fail_fast = req.fail_fast.unwrap_or(settings.parallel.fail_fast);
    let total = plans.len();
    let start = Instant::now();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(max));
    let mut set = tokio::task::JoinSet::new();
    for (i, plan) in plans.into_iter().enumerate() {
        let ctx = ctx.clone();
        let sem = sem.clone();
        let dry = req.dry_run;
        set.spawn(async move {
            let _permit = sem.acquire_owned().await;
            (i, run_one(&ctx, plan, dry).await)
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
        return Err(ApiError::bad_request(
            Code::MissingField,
            "`steps` must hold at least one step",
        )
        .with_param("steps"));
    }
    // Each step is planned once, with a stand-in for `{{previous}}`; its prompt is filled in
    // when it runs (and a folder passed on from an earlier step was checked in that step's plan).
    let plans = plan_all(
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
    let mut previous_workdir: Option<std::path::PathBuf> = None;
    let mut results = Vec::new();
    let mut failed_step: Option<usize> = None;
    for (step, mut plan) in req.steps.into_iter().zip(plans) {
        let i = results.len();
        let backend = plan.inv.backend;
        let template = step.request.prompt.unwrap_or_default();
        plan.inv.prompt = template.replace("{{previous}}", &previous);
        match &step.request.workdir {
            Some(_) => previous_workdir = plan.inv.workdir.clone(),
            None if req.pass_working_dir && previous_workdir.is_some() => {
                plan.inv.workdir = previous_workdir.clone();
            }
            None => {}
        }
        let run = if plan.inv.prompt.trim().is_empty() {
            error_result(
                backend,
                "`prompt` is empty once `{{previous}}` is filled in (the previous step gave no output)".into(),
            )
        } else {
            run_one(ctx, plan, req.dry_run).await
        };
        let outcome = StepOutcome::from(&run);
        let is_failed = outcome.failed();
        previous = outcome.output.clone().unwrap_or_default();
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
            Code::MissingField,
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
    let plans = plan_all(ctx, caller, "backends", req.backends.iter().map(make))?;
    let backends: Vec<Backend> = plans.iter().map(|p| p.inv.backend).collect();
    let start = Instant::now();
    let runs: Vec<PromptOutcome> = if req.sequential {
        let mut v = Vec::new();
        for plan in plans {
            v.push(run_one(ctx, plan, req.dry_run).await);
        }
        v
    } else {
        futures::future::join_all(plans.into_iter().map(|p| run_one(ctx, p, req.dry_run))).await
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
