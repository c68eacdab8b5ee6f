//! What starting a CLI takes: the adapter's argv, the program resolved, the environment and the
//! limits; the files some CLIs read (output schema, images); the dry run.

use super::*;
use crate::error::Code;

/// What a dry run reports: exactly what would run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct DryRun {
    pub(crate) backend: Backend,
    pub(crate) program: String,
    /// The full argv, program first.
    pub(crate) argv: Vec<String>,
    pub(crate) cwd: Option<String>,
    /// Names of the extra environment variables set for the child (values are not shown).
    pub(crate) env: Vec<String>,
    /// In warm mode: the worker's argv.
    pub(crate) worker_argv: Option<Vec<String>>,
    /// The prompt goes on the CLI's standard input, not in `argv`.
    pub(crate) stdin: bool,
}

pub(super) struct Prepared {
    pub(super) adapter: &'static dyn backend::Adapter,
    pub(super) spec: SpawnSpec,
    pub(super) argv: Vec<String>,
    pub(super) env_names: Vec<String>,
    pub(super) limits: Limits,
}

pub(super) fn prepare(ctx: &Ctx, inv: &Invocation) -> Result<Prepared, EngineError> {
    let cfg = backend_settings(ctx, inv.backend)?;
    let cmd = ctx
        .adapter(inv.backend)
        .build(inv, &cfg)
        .map_err(|e| EngineError::bad(Code::InvalidFlags, e.to_string()))?;
    prepare_command(ctx, inv, &cfg, cmd)
}

/// The settings of an enabled backend.
pub(super) fn backend_settings(
    ctx: &Ctx,
    backend: Backend,
) -> Result<BackendSettings, EngineError> {
    let cfg = ctx.settings().backend(backend);
    if !cfg.enabled {
        return Err(EngineError::Disabled(backend));
    }
    Ok(cfg)
}

/// What starting `cmd` for `inv` takes: the program resolved, the environment, the limits.
pub(super) fn prepare_command(
    ctx: &Ctx,
    inv: &Invocation,
    cfg: &BackendSettings,
    cmd: backend::CommandSpec,
) -> Result<Prepared, EngineError> {
    let settings = ctx.settings();
    let adapter = ctx.adapter(inv.backend);
    let status = ctx.backends.get(inv.backend);
    let program = match status {
        Some(st) if st.available => st.path.clone().map(PathBuf::from),
        Some(st) => {
            return Err(EngineError::Unavailable {
                name: inv.backend,
                message: st.message.unwrap_or_else(|| "not available".into()),
            })
        }
        None => None,
    };
    let program = program
        .or_else(|| {
            crate::availability::resolve(
                &cmd.program,
                crate::availability::child_path(cfg).as_deref(),
            )
        })
        .ok_or_else(|| EngineError::Unavailable {
            name: inv.backend,
            message: format!(
                "`{}` was not found; {}",
                cmd.program,
                inv.backend.install_hint()
            ),
        })?;
    let timeout = Duration::from_secs(
        cfg.timeout_secs
            .unwrap_or(settings.server.request_timeout_secs),
    );
    let mut argv = vec![program.display().to_string()];
    argv.extend(cmd.args.iter().cloned());
    let mut env: Vec<(String, String)> = cfg
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.extend(inv.env.iter().cloned());
    env.extend(cmd.env.iter().cloned());
    let mut env_remove = cfg.env_remove.clone();
    if let Some(account) = &inv.account {
        // A configured account's folder is made on its first run (0700).
        crate::accounts::create_folder(&account.dir).map_err(|e| {
            EngineError::Spawn(format!(
                "cannot make the folder of account {} ({}): {e}",
                account.name,
                account.dir.display()
            ))
        })?;
        account_env(inv.backend, account, &mut env, &mut env_remove);
    }
    let env_names = env.iter().map(|(k, _)| k.clone()).collect();
    let cwd = cmd.cwd.clone().or_else(|| inv.workdir.clone());
    Ok(Prepared {
        adapter,
        spec: SpawnSpec {
            backend: inv.backend,
            program,
            args: cmd.args,
            env,
            cwd,
            timeout,
            kill_grace: Duration::from_secs(settings.limits.kill_grace_secs),
            max_line_bytes: 8 * 1024 * 1024,
            max_output_bytes: settings.limits.max_output_bytes,
            stdin: cmd.stdin.map(String::into_bytes),
            env_remove,
        },
        argv,
        env_names,
        limits: limits(&settings, cfg),
    })
}

/// An account's run: its variables over the others (the last of a name wins), and the login
/// variables of the daemon, of `backends.<b>.env` and of the request gone unless the account
/// sets them (one account's login never reaches another's CLI).
fn account_env(
    backend: clinvk_shared::api::Backend,
    account: &crate::accounts::AccountDef,
    env: &mut Vec<(String, String)>,
    env_remove: &mut Vec<String>,
) {
    let own = account.env(backend);
    let sets = |name: &str| own.iter().any(|(k, _)| k == name);
    for var in backend.info().login_vars {
        if !sets(var) {
            env.retain(|(k, _)| k != var);
            env_remove.push(var.to_string());
        }
    }
    env_remove.retain(|v| !sets(v));
    env.extend(own);
}

/// The concurrency limits a run of a backend configured `cfg` is started under.
pub(crate) fn limits(settings: &clinvk_shared::config::Settings, cfg: &BackendSettings) -> Limits {
    Limits {
        global: settings.limits.max_concurrent,
        backend: cfg.max_concurrent,
        queue: settings.limits.queue_size,
        queue_timeout: Duration::from_secs(settings.limits.queue_timeout_secs),
    }
}

/// Whether the backend reads the output schema from a file (codex `--output-schema FILE`).
pub(super) fn schema_in_file(ctx: &Ctx, inv: &Invocation) -> bool {
    inv.output_schema.is_some()
        && ctx.adapter(inv.backend).capabilities().output_schema == backend::SchemaDelivery::File
}

/// Writes the output schema where the CLI reads it (private, removed with the run).
pub(super) fn write_schema_file(
    ctx: &Ctx,
    schema: &serde_json::Value,
) -> Result<tempfile::NamedTempFile, EngineError> {
    let dir = ctx.paths.state_dir.join("tmp");
    let fail = |e: std::io::Error| {
        EngineError::Spawn(format!(
            "cannot write the output schema file in {}: {e}",
            dir.display()
        ))
    };
    clinvk_shared::paths::ensure_private_dir(&dir).map_err(fail)?;
    let mut file = tempfile::Builder::new()
        .prefix("output-schema-")
        .suffix(".json")
        .tempfile_in(&dir)
        .map_err(fail)?;
    use std::io::Write as _;
    file.write_all(schema.to_string().as_bytes())
        .map_err(fail)?;
    file.flush().map_err(fail)?;
    Ok(file)
}

/// Whether the backend reads the images from files (codex `-i`, gemini `@path`); claude takes
/// them in its stream-json input.
pub(super) fn images_in_files(ctx: &Ctx, inv: &Invocation) -> bool {
    !inv.images.is_empty()
        && ctx.adapter(inv.backend).capabilities().images == backend::ImageDelivery::Files
}

pub(super) fn image_extension(media_type: &str) -> &'static str {
    match media_type {
        "image/jpeg" => "jpg",
        "image/gif" => "gif",
        "image/webp" => "webp",
        _ => "png",
    }
}

/// Writes the images into a private folder of the run (removed with it).
pub(super) fn write_images(
    ctx: &Ctx,
    inv: &mut Invocation,
) -> Result<tempfile::TempDir, EngineError> {
    let dir = ctx.paths.state_dir.join("tmp");
    let fail = |e: std::io::Error| {
        EngineError::Spawn(format!("cannot write the images in {}: {e}", dir.display()))
    };
    clinvk_shared::paths::ensure_private_dir(&dir).map_err(fail)?;
    let scratch = tempfile::Builder::new()
        .prefix("images-")
        .tempdir_in(&dir)
        .map_err(fail)?;
    for (i, img) in inv.images.iter().enumerate() {
        let path = scratch.path().join(format!(
            "image-{}.{}",
            i + 1,
            image_extension(&img.media_type)
        ));
        std::fs::write(&path, img.bytes.as_slice()).map_err(fail)?;
        inv.image_files.push(path);
    }
    Ok(scratch)
}

/// The exact argv that `start` would run, without starting anything.
pub(crate) fn dry_run(ctx: &Ctx, inv: &Invocation) -> Result<DryRun, EngineError> {
    let mut inv = inv.clone();
    if schema_in_file(ctx, &inv) {
        inv.output_schema_file = Some(ctx.paths.state_dir.join("tmp/output-schema-XXXXXX.json"));
    }
    if images_in_files(ctx, &inv) {
        inv.image_files = inv
            .images
            .iter()
            .enumerate()
            .map(|(i, img)| {
                ctx.paths.state_dir.join(format!(
                    "tmp/images-XXXXXX/image-{}.{}",
                    i + 1,
                    image_extension(&img.media_type)
                ))
            })
            .collect();
    }
    let inv = &inv;
    let p = prepare(ctx, inv)?;
    let cfg = backend_settings(ctx, inv.backend)?;
    let worker_argv = match cfg.mode {
        BackendMode::Warm => {
            let live = ctx
                .adapter(inv.backend)
                .live(inv, &cfg)
                .map_err(|e| EngineError::bad(Code::InvalidFlags, e.to_string()))?;
            if live.driver.accepts(inv) {
                Some(prepare_command(ctx, inv, &cfg, live.command)?.argv)
            } else {
                None
            }
        }
        BackendMode::Oneshot => None,
    };
    Ok(DryRun {
        backend: inv.backend,
        program: p.spec.program.display().to_string(),
        argv: p.argv,
        cwd: p.spec.cwd.map(|c| c.display().to_string()),
        env: p.env_names,
        worker_argv,
        stdin: p.spec.stdin.is_some(),
    })
}
