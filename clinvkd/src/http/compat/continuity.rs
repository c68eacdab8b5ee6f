//! Conversation continuity: a resent conversation whose earlier turns are a stored one
//! continues that session (transcript hashes).

use super::*;

/// A stable hash of a conversation on one target: what identifies a conversation for continuity.
pub(crate) fn transcript_hash(target: &Target, system: Option<&str>, msgs: &[Msg]) -> String {
    let turns: Vec<serde_json::Value> = msgs
        .iter()
        .map(|m| json!([m.role.name(), m.label, m.text.trim()]))
        .collect();
    let canon = json!({
        "backend": target.backend,
        "model": target.model,
        "system": system.map(str::trim),
        "turns": turns,
    });
    let digest = Sha256::digest(serde_json::to_vec(&canon).unwrap_or_default());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// What is needed to record a conversation when its turn succeeds.
pub(crate) struct Continuity {
    pub(crate) session_id: Option<String>,
    /// The conversation up to and including the new turns (the reply is appended at the end).
    pub(super) transcript: Vec<Msg>,
    pub(super) target: Target,
    pub(super) system: Option<String>,
    /// What serves the turn (a route or a move to another account may change the backend).
    pub(crate) served: crate::ops::prompt::Served,
}

impl Continuity {
    /// For a route: the name of the target that served the answer.
    pub(crate) fn shown_model(&self) -> Option<String> {
        self.target
            .route
            .then(|| super::served_name(&self.served.get()))
    }

    /// What `shown_model` needs, apart (the stream's task owns the rest).
    pub(super) fn clone_shown(&self) -> Continuity {
        Continuity {
            session_id: None,
            transcript: Vec::new(),
            target: self.target.clone(),
            system: None,
            served: self.served.clone(),
        }
    }

    /// Stores the transcript hash of the conversation including `reply`, so the client's next
    /// request (which sends this reply back as history) continues this session.
    pub(super) fn commit(&self, ctx: &Ctx, reply: &str) {
        let Some(id) = &self.session_id else { return };
        let mut msgs = self.transcript.clone();
        msgs.push(Msg::new(Role::Assistant, reply));
        // A route that fell through to another backend: the next request resolves there too.
        let by = self.served.get();
        let target = if by.backend == self.target.backend {
            self.target.clone()
        } else {
            Target {
                backend: by.backend,
                model: by.model,
                ..Default::default()
            }
        };
        let hash = transcript_hash(&target, self.system.as_deref(), &msgs);
        crate::session::check_write(
            "transcript_hash",
            id,
            ctx.sessions.update(id, |s| s.transcript_hash = Some(hash)),
        );
    }
}
