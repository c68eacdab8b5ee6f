//! Whether a CLI can run as the user, read from its row in the table of CLIs
//! (`clinvk_shared::cli`): its own status command, a custom model provider in its config, its
//! key variables, a saved login in its state folder — the first that holds. Variable names and
//! file paths are shown, never a secret.

use super::run_program;
use clinvk_shared::cli::{CliInfo, EnvLogin, StatusCommand};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// How the CLI is logged in, or (what is missing, the fix).
pub(super) type Login = Result<String, (String, String)>;

type Env = BTreeMap<String, String>;

fn set<'a>(env: &'a Env, names: &[&'a str]) -> Option<&'a str> {
    names
        .iter()
        .copied()
        .find(|n| env.get(*n).is_some_and(|v| !v.trim().is_empty()))
}

pub(super) async fn check(cli: &CliInfo, program: &Path, env: &Env) -> Login {
    let login = &cli.login;
    let not_logged_in = || (login.missing.to_string(), login.fix.to_string());
    match &login.status {
        Some(StatusCommand::Json(args)) => return json_status(cli, program, args, env).await,
        Some(StatusCommand::ExitCode(args)) => {
            if let Ok((true, _, _)) = run_program(program, args, env, Duration::from_secs(30)).await
            {
                return Ok(format!("logged in (`{} {}`)", cli.name, args.join(" ")));
            }
        }
        None => {}
    }
    let state = cli.state.resolve(env);
    if let Some(file) = login.provider_config {
        if let Some(found) = provider(&state.join(file), env, cli.name) {
            return found;
        }
    }
    if let Some(how) = login.env.iter().find_map(|e| by_env(e, env)) {
        return Ok(how);
    }
    if let Some(f) = login
        .saved_login
        .iter()
        .map(|f| state.join(f))
        .find(|f| f.is_file())
    {
        return Ok(format!("saved login ({})", f.display()));
    }
    Err(not_logged_in())
}

fn by_env(e: &EnvLogin, env: &Env) -> Option<String> {
    if !e.all_of.iter().all(|v| set(env, &[v]).is_some()) {
        return None;
    }
    // An empty `any_of` asks for nothing more (copilot's own provider: its URL alone).
    let any = match e.any_of {
        [] => None,
        vars => Some(set(env, vars)?),
    };
    match (e.all_of.first(), any) {
        (None, Some(var)) => Some(format!("{} from {var}", e.label)),
        (Some(first), _) => Some(format!("{} ({first})", e.label)),
        (None, None) => None,
    }
}

/// A status command printing `loggedIn`, `authMethod`, `apiKeySource` (never the key).
async fn json_status(cli: &CliInfo, program: &Path, args: &[&str], env: &Env) -> Login {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Status {
        logged_in: bool,
        auth_method: Option<String>,
        api_key_source: Option<String>,
    }
    let fix = cli.login.fix.to_string();
    let command = format!("`{} {}`", cli.name, args.join(" "));
    let (_, out, _) = run_program(program, args, env, Duration::from_secs(30))
        .await
        .map_err(|e| (format!("{command} {e}"), fix.clone()))?;
    match serde_json::from_str::<Status>(out.trim()) {
        Ok(s) if s.logged_in => Ok(format!(
            "logged in ({}{})",
            s.auth_method.unwrap_or_else(|| "unknown method".into()),
            s.api_key_source
                .map(|k| format!(" from {k}"))
                .unwrap_or_default()
        )),
        Ok(_) => Err((cli.login.missing.into(), fix)),
        Err(_) => Err((
            format!("{command} gave no status this version understands"),
            fix,
        )),
    }
}

/// A configured model provider (`model_provider` → `model_providers.<p>.env_key`) and whether
/// its key variable is set; None when the file names none.
fn provider(file: &Path, env: &Env, name: &str) -> Option<Login> {
    let doc = std::fs::read_to_string(file)
        .ok()?
        .parse::<toml::Table>()
        .ok()?;
    let p = doc.get("model_provider")?.as_str()?;
    let var = doc
        .get("model_providers")?
        .get(p)?
        .get("env_key")?
        .as_str()?;
    Some(match set(env, &[var]) {
        Some(_) => Ok(format!("model provider `{p}` with its key from {var}")),
        None => Err((
            format!("model provider `{p}` needs {var}, which is not set"),
            format!("set {var} in the daemon's environment or backends.{name}.env"),
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clinvk_shared::api::Backend;

    fn env(pairs: &[(&str, &str)]) -> Env {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[tokio::test]
    async fn env_and_saved_logins() {
        let home = tempfile::tempdir().unwrap();
        let h = home.path().to_str().unwrap();
        let gemini = Backend::Gemini.info();
        let none = Path::new("/nonexistent/gemini");
        let got = check(gemini, none, &env(&[("HOME", h), ("GEMINI_API_KEY", "k")])).await;
        assert_eq!(got.unwrap(), "API key from GEMINI_API_KEY");
        let got = check(
            gemini,
            none,
            &env(&[
                ("HOME", h),
                ("GOOGLE_GENAI_USE_VERTEXAI", "true"),
                ("GOOGLE_CLOUD_PROJECT", "p"),
            ]),
        )
        .await;
        assert_eq!(got.unwrap(), "Vertex AI (GOOGLE_GENAI_USE_VERTEXAI)");
        let missing = check(gemini, none, &env(&[("HOME", h)])).await.unwrap_err();
        assert!(missing.0.contains("not logged in"), "{missing:?}");
        std::fs::create_dir_all(home.path().join(".gemini")).unwrap();
        std::fs::write(home.path().join(".gemini/oauth_creds.json"), "{}").unwrap();
        let saved = check(gemini, none, &env(&[("HOME", h)])).await.unwrap();
        assert!(saved.contains("oauth_creds.json"), "{saved}");
    }

    #[tokio::test]
    async fn copilot_token_or_own_provider() {
        let copilot = Backend::Copilot.info();
        let none = Path::new("/nonexistent/copilot");
        let got = check(copilot, none, &env(&[("HOME", "/h"), ("GH_TOKEN", "t")])).await;
        assert_eq!(got.unwrap(), "GitHub token from GH_TOKEN");
        let got = check(
            copilot,
            none,
            &env(&[("HOME", "/h"), ("COPILOT_PROVIDER_BASE_URL", "http://x")]),
        )
        .await;
        assert_eq!(
            got.unwrap(),
            "own model provider (COPILOT_PROVIDER_BASE_URL)"
        );
        assert!(check(copilot, none, &env(&[("HOME", "/h")])).await.is_err());
    }

    #[tokio::test]
    async fn codex_provider_config() {
        let home = tempfile::tempdir().unwrap();
        let h = home.path().to_str().unwrap();
        std::fs::create_dir_all(home.path().join(".codex")).unwrap();
        std::fs::write(
            home.path().join(".codex/config.toml"),
            "model_provider = \"fake\"\n[model_providers.fake]\nenv_key = \"FAKE_KEY\"\n",
        )
        .unwrap();
        let codex = Backend::Codex.info();
        let none = Path::new("/nonexistent/codex");
        let ok = check(codex, none, &env(&[("HOME", h), ("FAKE_KEY", "x")])).await;
        assert_eq!(
            ok.unwrap(),
            "model provider `fake` with its key from FAKE_KEY"
        );
        let no = check(codex, none, &env(&[("HOME", h)])).await.unwrap_err();
        assert!(no.0.contains("FAKE_KEY"), "{no:?}");
    }
}
