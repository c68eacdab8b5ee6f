//! `clinvk parallel`, `clinvk chain`, `clinvk compare`: several prompts, run by the daemon.

use crate::{call_json, exit, print_json, ClientError};
use serde_json::{json, Value};

fn read_file(path: &std::path::Path) -> Result<Value, ClientError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ClientError::Other(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| ClientError::Other(format!("{} is not valid JSON: {e}", path.display())))
}

fn absolutize_workdirs(items: &mut Value) {
    if let Some(arr) = items.as_array_mut() {
        for t in arr {
            if let Some(w) = t["workdir"].as_str() {
                if let Ok(abs) = std::path::absolute(w) {
                    t["workdir"] = json!(abs);
                }
            }
        }
    }
}

fn line_for(i: usize, label: &str, r: &Value) -> String {
    let status = if r["error"].is_null() {
        "ok".to_string()
    } else {
        format!("FAILED: {}", r["error"].as_str().unwrap_or_default())
    };
    format!(
        "[{}] {label} — {status} ({} ms)\n{}",
        i + 1,
        r["duration_ms"],
        r["output"].as_str().unwrap_or_default().trim_end()
    )
}

/// One block per result, labelled by `label_key` (`backend` or `name`).
fn print_results(v: &Value, label_key: &str) {
    for (i, r) in v["results"].as_array().into_iter().flatten().enumerate() {
        println!(
            "{}\n",
            line_for(i, r[label_key].as_str().unwrap_or_default(), r)
        );
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
    let mut body = read_file(&args.file)?;
    if body.is_array() {
        body = json!({"tasks": body});
    }
    absolutize_workdirs(&mut body["tasks"]);
    if let Some(m) = args.max_parallel {
        body["max_parallel"] = json!(m);
    }
    if args.fail_fast {
        body["fail_fast"] = json!(true);
    }
    let n = body["tasks"].as_array().map(|a| a.len()).unwrap_or(0);
    eprintln!("running {n} tasks…");
    let mut done = 0;
    let v = crate::call_stream(&paths, "parallel", body, |ev| {
        done += 1;
        let status = match ev["error"].as_str() {
            None => "ok".to_string(),
            Some(e) => format!("FAILED: {e}"),
        };
        eprintln!(
            "[{done}/{n}] task {} ({}) {status} ({} ms)",
            ev["index"].as_u64().unwrap_or(0) + 1,
            ev["backend"].as_str().unwrap_or_default(),
            ev["duration_ms"]
        );
    })
    .await?;
    if args.json {
        print_json(&v);
    } else {
        print_results(&v, "backend");
        println!(
            "{} of {} tasks completed, {} failed ({} ms)",
            v["completed"], v["total_tasks"], v["failed"], v["total_duration_ms"]
        );
    }
    Ok(if v["failed"].as_u64().unwrap_or(0) > 0 {
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
    let mut body = read_file(&args.file)?;
    if body.is_array() {
        body = json!({"steps": body});
    }
    absolutize_workdirs(&mut body["steps"]);
    let v = call_json(&paths, "chain", body).await?;
    if args.json {
        print_json(&v);
    } else {
        print_results(&v, "name");
        println!(
            "{} of {} steps completed",
            v["completed_steps"], v["total_steps"]
        );
    }
    Ok(if v["failed_step"].is_null() {
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
        let v = call_json(&paths, "backends", json!({})).await?;
        v["backends"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter(|b| b["available"] == json!(true))
            .filter_map(|b| b["name"].as_str().map(str::to_string))
            .collect()
    } else {
        args.backends
    };
    if backends.is_empty() {
        return Err(ClientError::Other(
            "no backend is available to compare".into(),
        ));
    }
    let workdir = std::env::current_dir()?;
    let v = call_json(
        &paths,
        "compare",
        json!({"backends": backends, "prompt": args.prompt, "workdir": workdir, "sequential": args.sequential}),
    )
    .await?;
    if args.json {
        print_json(&v);
    } else {
        print_results(&v, "backend");
    }
    let any_failed = v["results"]
        .as_array()
        .is_some_and(|a| a.iter().any(|r| !r["error"].is_null()));
    Ok(if any_failed { exit::FAILURE } else { exit::OK })
}
