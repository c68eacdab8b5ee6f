//! The core error of every operation (`ops`, `engine`, `session`, `keys`, `supervisor`): what
//! went wrong (`Kind`), a machine code, a message for people and optional extras. It knows
//! nothing of HTTP: `http/error.rs` alone maps a kind to a status and each API style's shape, and
//! the control socket sends the code and message to the clients.

/// What went wrong, independent of the API style.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    BadRequest,
    Unauthorized,
    /// Refused by policy: a foreign origin, an escalation the operator does not allow.
    Forbidden,
    NotFound,
    ModelNotFound,
    MethodNotAllowed,
    Conflict,
    /// The client took too long to send its request.
    RequestTimeout,
    PayloadTooLarge,
    UnsupportedMediaType,
    /// The `Host` is not one this server answers for (DNS rebinding).
    Misdirected,
    RateLimited,
    /// No capacity, backend unavailable, or the daemon is draining.
    Unavailable,
    /// The CLI ran and failed.
    CliFailed,
    Timeout,
    Internal,
}

/// An error answer: kind, machine code, message, and optional extras.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub(crate) kind: Kind,
    pub(crate) code: String,
    pub(crate) message: String,
    pub(crate) param: Option<String>,
    pub(crate) retry_after_secs: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(kind: Kind, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind,
            code: code.into(),
            message: message.into(),
            param: None,
            retry_after_secs: None,
        }
    }

    pub(crate) fn bad_request(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Kind::BadRequest, code, message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(Kind::NotFound, "not_found", message)
    }

    /// The path exists, the method does not.
    pub(crate) fn method_not_allowed(method: impl std::fmt::Display, path: &str) -> Self {
        Self::new(
            Kind::MethodNotAllowed,
            "method_not_allowed",
            format!("method {method} is not allowed on {path}"),
        )
    }

    /// Nothing is served at this path.
    pub(crate) fn no_route(method: impl std::fmt::Display, path: &str) -> Self {
        Self::not_found(format!("no route for {method} {path}"))
    }

    pub(crate) fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// The machine code (`missing_field`, `session_not_found`, …).
    pub(crate) fn code(&self) -> &str {
        &self.code
    }

    /// What kind of failure this is.
    pub(crate) fn kind(&self) -> Kind {
        self.kind
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}
