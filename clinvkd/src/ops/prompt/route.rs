//! Which account, and for a model route which backend, serves a turn (`Served`): the first
//! candidate, and the ones a turn refused for a spent window before any output moves to (once
//! to the backend's next account, once to each later target of the route, `move_on`), carrying
//! the conversation.

use super::*;
use crate::accounts::AccountDef;
use crate::session::check_write;

/// A backend, model and account a turn can run on.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub(crate) backend: Backend,
    pub(crate) model: Option<String>,
    /// None: the CLI's own login.
    pub(crate) account: Option<AccountDef>,
    /// Refused by a spent window until then (Unix seconds).
    refused_until: Option<i64>,
}

impl Candidate {
    pub(crate) fn account_name(&self) -> Option<String> {
        self.account.as_ref().map(|a| a.name.clone())
    }
}

/// The candidates of `backend` (its accounts in routing order).
fn of_backend(ctx: &Ctx, backend: Backend, model: Option<String>, advance: bool) -> Vec<Candidate> {
    let settings = ctx.settings();
    ctx.accounts
        .ranked(&settings, &ctx.quotas, backend, advance)
        .into_iter()
        .filter_map(|r| {
            let account = match &r.name {
                Some(n) => Some(ctx.accounts.get(&settings, backend, n)?),
                None => None,
            };
            Some(Candidate {
                backend,
                model: model.clone(),
                account,
                refused_until: r.refused_until,
            })
        })
        .collect()
}

/// The first candidate of a turn and the ones it may move to. A continued session stays in its
/// account (unless that account is gone, or refused while another is not); a new one goes
/// where `routing` says. When every candidate is refused until a reset, the turn is not asked
/// of any: 429 with the earliest reset (a single candidate is asked: only its CLI can tell).
/// `advance`: a round-robin choice for a new session moves the turn on (a dry run only looks).
pub(super) fn route(
    ctx: &Ctx,
    plan: &Plan,
    session: Option<&Session>,
    advance: bool,
) -> Result<(Candidate, Vec<Candidate>), ApiError> {
    let mut all = of_backend(
        ctx,
        plan.inv.backend,
        plan.inv.model.clone(),
        advance && session.is_none(),
    );
    for (b, m) in &plan.fallbacks {
        if *b != plan.inv.backend && ctx.settings().backend(*b).enabled {
            all.extend(of_backend(ctx, *b, m.clone(), false));
        }
    }
    // A continued session: its own account first.
    if let Some(s) = session {
        let own = all
            .iter()
            .position(|c| c.backend == s.backend && c.account_name() == s.account);
        match own {
            Some(i) => {
                let c = all.remove(i);
                all.insert(0, c);
            }
            // Made under the own login before accounts were set up: it stays there.
            None if s.account.is_none() => all.insert(
                0,
                Candidate {
                    backend: s.backend,
                    model: plan.inv.model.clone(),
                    account: None,
                    refused_until: None,
                },
            ),
            None => {} // its account is gone: the session moves.
        }
    }
    if all.len() > 1 && all.iter().all(|c| c.refused_until.is_some()) {
        let reset = all.iter().filter_map(|c| c.refused_until).min();
        return Err(all_refused(plan.inv.backend, reset));
    }
    let first = match session {
        Some(s) if all[0].backend == s.backend && all[0].account_name() == s.account => {
            // Its own account, unless refused while another is not.
            if all[0].refused_until.is_some() && all.iter().any(|c| c.refused_until.is_none()) {
                first_usable(&mut all)
            } else {
                all.remove(0)
            }
        }
        _ => first_usable(&mut all),
    };
    // Then: once to the backend's next usable account, once to each later target's first.
    let mut next: Vec<Candidate> = Vec::new();
    for c in all.into_iter().filter(|c| c.refused_until.is_none()) {
        if !next.iter().any(|n| n.backend == c.backend) {
            next.push(c);
        }
    }
    Ok((first, next))
}

/// The earliest reset among a backend's accounts refused until a reset.
pub(super) fn earliest_reset(ctx: &Ctx, backend: Backend) -> Option<i64> {
    ctx.accounts
        .ranked(&ctx.settings(), &ctx.quotas, backend, false)
        .into_iter()
        .filter_map(|r| r.refused_until)
        .min()
}

/// The first candidate not refused (the first of all when every one is).
fn first_usable(all: &mut Vec<Candidate>) -> Candidate {
    let i = all
        .iter()
        .position(|c| c.refused_until.is_none())
        .unwrap_or(0);
    all.remove(i)
}

/// 429: every account the turn could use is refused until a reset (the earliest is named).
fn all_refused(backend: Backend, reset: Option<i64>) -> ApiError {
    let mut limits = crate::quota::refusal_report("clinvk accounts", None, None);
    limits.resets_at = reset;
    engine::usage_limit_error(
        backend,
        &limits,
        "every account this request can use is refused; none was asked",
    )
}

/// The backend, model and account that serve a turn, as they are when the answer starts (a
/// move to another account before any output changes them).
#[derive(Debug, Clone, Default)]
pub(crate) struct Served(std::sync::Arc<std::sync::Mutex<ServedBy>>);

#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ServedBy {
    pub(crate) backend: Backend,
    pub(crate) model: Option<String>,
    /// None: the CLI's own login.
    pub(crate) account: Option<String>,
}

impl Served {
    pub(crate) fn get(&self) -> ServedBy {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(super) fn set(&self, by: ServedBy) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = by;
    }
}

impl PromptRun {
    /// A spent window refused the turn before any output: it starts again on the next
    /// candidate, as a new CLI session carrying the conversation. False when none starts.
    pub(super) async fn move_on(&mut self) -> bool {
        let from = (
            self.account.backend,
            self.account.quota_account().to_string(),
        );
        self.ctx.quotas.refused(from.0, &from.1);
        // The refused CLI session is never continued: its warm worker goes now.
        if let Some(sid) = &self.backend_sid {
            self.ctx.workers.retire_session(from.0, sid);
        }
        while let Some(next) = self.retries.pop_front() {
            let turns = match &self.session_id {
                Some(id) => self
                    .ctx
                    .sessions
                    .get(id, None)
                    .map(|s| s.turns)
                    .unwrap_or_default(),
                None => Vec::new(),
            };
            let mut inv = self.inv.clone();
            if next.backend != inv.backend {
                inv.backend = next.backend;
                inv.model = next.model.clone();
                inv.extra.clear();
            }
            inv.account = next.account.clone();
            inv.resume = None;
            inv.prompt = carried_prompt(&turns, &self.prompt);
            match engine::start(&self.ctx, inv.clone()).await {
                Ok(run) => {
                    tracing::info!(
                        from_backend = %from.0, from_account = %from.1,
                        to_backend = %next.backend,
                        to_account = next.account_name().as_deref().unwrap_or(crate::quota::DEFAULT_ACCOUNT),
                        "a spent quota window refused the turn before any output: it moves to the next account"
                    );
                    self.run = Some(run);
                    self.held.clear();
                    self.tool_calls.clear();
                    self.backend = next.backend;
                    self.backend_sid = None;
                    self.account.backend = next.backend;
                    self.account.account = next.account_name();
                    self.account.model = inv.model.clone();
                    self.served.set(ServedBy {
                        backend: next.backend,
                        model: inv.model.clone(),
                        account: next.account_name(),
                    });
                    if let Some(id) = &self.session_id {
                        let (account, model) = (next.account_name(), inv.model.clone());
                        let backend = next.backend;
                        let r = self
                            .ctx
                            .sessions
                            .update_async(id, move |s| {
                                s.backend = backend;
                                s.account = account;
                                s.model = model;
                                s.backend_session_id = None;
                            })
                            .await;
                        check_write("account", id, r);
                    }
                    return true;
                }
                Err(e) => {
                    tracing::warn!(backend = %next.backend, error = %e, "the next account could not take the refused turn");
                }
            }
        }
        false
    }
}

/// What a turn moved to a new CLI session sends: the session's earlier turns, whole, then the
/// turn's own prompt.
pub(super) fn carried_prompt(turns: &[Turn], prompt: &str) -> String {
    let done: Vec<&Turn> = turns.iter().filter(|t| t.error.is_none()).collect();
    if done.is_empty() {
        return prompt.to_string();
    }
    let mut out = String::from(
        "The conversation so far is below, one turn per block (it continues in a new session). Reply as the assistant to the last turn.\n\n",
    );
    for t in done {
        out.push_str("[user]\n");
        out.push_str(t.prompt.trim_end());
        out.push_str("\n\n[assistant]\n");
        for c in &t.tool_calls {
            out.push_str(&format!(
                "(called the tool `{}` with {})\n",
                c.name, c.input
            ));
        }
        out.push_str(t.output_summary.trim_end());
        out.push_str("\n\n");
    }
    out.push_str("[user — reply to this]\n");
    out.push_str(prompt);
    out
}

/// The account a new session with the default settings would go to now (the warm pool starts
/// its workers there; nothing moves on).
pub(crate) fn peek_account(ctx: &Ctx, backend: Backend) -> Option<AccountDef> {
    let all = of_backend(ctx, backend, None, false);
    all.iter()
        .find(|c| c.refused_until.is_none())
        .or(all.first())
        .and_then(|c| c.account.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_moved_session_carries_its_answered_turns() {
        assert_eq!(carried_prompt(&[], "hi"), "hi");
        let turn = |p: &str, o: &str, err: bool| Turn {
            prompt: p.into(),
            output_summary: o.into(),
            error: err.then(|| "failed".to_string()),
            ..Default::default()
        };
        let p = carried_prompt(
            &[turn("one", "first answer", false), turn("lost", "", true)],
            "two",
        );
        assert!(
            p.contains("[user]\none\n\n[assistant]\nfirst answer"),
            "{p}"
        );
        assert!(!p.contains("lost"), "{p}");
        assert!(p.ends_with("[user — reply to this]\ntwo"), "{p}");
    }
}
