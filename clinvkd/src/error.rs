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

/// Declares the error codes: one variant each, its wire name and what it means.
macro_rules! codes {
    ($($variant:ident = $name:literal: $doc:literal,)*) => {
        /// The machine code of an error answer, one vocabulary for every API style and the
        /// control socket (listed in `/openapi.json` as `ErrorCode`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub(crate) enum Code {
            $(#[doc = $doc] $variant,)*
        }

        impl Code {
            pub(crate) const ALL: &'static [Code] = &[$(Code::$variant,)*];

            /// Its name on the wire (`missing_field`).
            pub(crate) fn as_str(self) -> &'static str {
                match self {
                    $(Code::$variant => $name,)*
                }
            }

            /// What it means, for the API description.
            pub(crate) fn meaning(self) -> &'static str {
                match self {
                    $(Code::$variant => $doc,)*
                }
            }
        }
    };
}

codes! {
    AccountExists = "account_exists": "The backend already has an account of this name.",
    AccountNotFound = "account_not_found": "The backend has no account of this name.",
    AccountStoreError = "account_store_error": "An account's folder or token could not be written or removed.",
    AtCapacity = "at_capacity": "Every concurrency slot and the queue are taken (503), or the queue wait ran out.",
    BackendDisabled = "backend_disabled": "The backend is disabled in the configuration.",
    BackendFailed = "backend_failed": "The CLI ran and failed (502).",
    BackendTimeout = "backend_timeout": "The CLI ran past its timeout (504).",
    BackendUnavailable = "backend_unavailable": "The CLI is not installed or does not start.",
    EnvNotAllowed = "env_not_allowed": "A request set an environment variable the operator does not allow.",
    EscalationNotAllowed = "escalation_not_allowed": "A request asked for looser approval or sandbox modes than configured.",
    ExpiredApiKey = "expired_api_key": "The API key has expired.",
    ImageTooLarge = "image_too_large": "An image is larger than allowed.",
    InsufficientScope = "insufficient_scope": "The key's scope does not allow this operation.",
    InvalidAccount = "invalid_account": "An account name or token is not valid, or the CLI takes no token.",
    InvalidApiKey = "invalid_api_key": "The API key is not known.",
    InvalidBody = "invalid_body": "The body does not match the operation (wrong or unknown fields).",
    InvalidFlags = "invalid_flags": "`extra` holds a flag that is not allowed, or a malformed one.",
    InvalidImage = "invalid_image": "An image is not valid base64 or not the type it claims.",
    InvalidJson = "invalid_json": "The body is not JSON.",
    InvalidModel = "invalid_model": "The model name has characters a model name cannot have.",
    InvalidOutputSchema = "invalid_output_schema": "`output_schema` is not a JSON Schema object.",
    InvalidRequest = "invalid_request": "A field of a compatible API request is invalid.",
    InvalidSessionId = "invalid_session_id": "A session id is malformed or too short a prefix.",
    InvalidWorkdir = "invalid_workdir": "`workdir` is not an absolute path.",
    KeyStoreError = "key_store_error": "The key store could not be written.",
    MethodNotAllowed = "method_not_allowed": "The path exists, the method does not.",
    MetricsDisabled = "metrics_disabled": "`/metrics` is off in the configuration.",
    MisdirectedRequest = "misdirected_request": "The `Host` is not a name this server answers for.",
    MissingApiKey = "missing_api_key": "Keys are required and none was sent.",
    MissingField = "missing_field": "A required field is missing or empty.",
    ModelNotFound = "model_not_found": "No backend serves this model name.",
    NotFound = "not_found": "Nothing is served at this path, or the object does not exist.",
    OriginNotAllowed = "origin_not_allowed": "The request came from a web page of another origin.",
    QuotaExceeded = "quota_exceeded": "A key's quota is used up (429 with Retry-After).",
    RateLimited = "rate_limited": "Too many requests, or too many failed key checks (429 with Retry-After).",
    RequestTimeout = "request_timeout": "The client took too long to send its request.",
    RequestTooLarge = "request_too_large": "The body is larger than allowed.",
    ResponseNotFound = "response_not_found": "No stored response has this id.",
    ResponseNotResumable = "response_not_resumable": "The stored response cannot be continued.",
    ResponseStoreError = "response_store_error": "The response store could not be written.",
    RunNotFound = "run_not_found": "No running prompt (visible to this key) has this id.",
    RunLost = "run_lost": "The run ended without a result (the daemon is stopping, or the CLI vanished).",
    SerializationFailed = "serialization_failed": "An answer could not be written as JSON.",
    SessionBackendMismatch = "session_backend_mismatch": "The session belongs to another backend.",
    SessionNotFound = "session_not_found": "No session (visible to this key) has this id.",
    SessionNotResumable = "session_not_resumable": "The session has no backend session to continue yet.",
    SessionStoreError = "session_store_error": "The session store could not be written.",
    ShuttingDown = "shutting_down": "The daemon is stopping and takes no new work.",
    TooManyAuthFailures = "too_many_auth_failures": "Too many failed key checks from this address (429 with Retry-After).",
    TooManyImages = "too_many_images": "More images than allowed in one prompt.",
    ToolCallExpired = "tool_call_expired": "The tool call this result answers has expired (409).",
    ToolCallNotPending = "tool_call_not_pending": "The tool call this result answers is not waiting.",
    ToolResultsMissing = "tool_results_missing": "Results are missing for some of the pending tool calls.",
    UnknownBackend = "unknown_backend": "No backend has this name.",
    UnsupportedContent = "unsupported_content": "A content type a CLI cannot take.",
    UnsupportedField = "unsupported_field": "A field clinvk cannot honour and must not drop.",
    UnsupportedImageType = "unsupported_image_type": "An image type the CLIs cannot take.",
    UnsupportedMediaType = "unsupported_media_type": "The body is not `application/json`.",
    UnsupportedParameter = "unsupported_parameter": "A parameter clinvk cannot honour and must not drop.",
    UsageLimitReached = "usage_limit_reached": "The CLI's subscription refused the run: a quota window is spent (429, `Retry-After` = seconds to its reset).",
    UsageStoreError = "usage_store_error": "The usage store could not be read or written.",
    WorkdirNotAllowed = "workdir_not_allowed": "The working folder is outside the server's workdir policy.",
}

impl serde::Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error answer: kind, machine code, message, and optional extras.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub(crate) kind: Kind,
    pub(crate) code: Code,
    pub(crate) message: String,
    pub(crate) param: Option<String>,
    pub(crate) retry_after_secs: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(kind: Kind, code: Code, message: impl Into<String>) -> Self {
        Self {
            kind,
            code,
            message: message.into(),
            param: None,
            retry_after_secs: None,
        }
    }

    pub(crate) fn bad_request(code: Code, message: impl Into<String>) -> Self {
        Self::new(Kind::BadRequest, code, message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(Kind::NotFound, Code::NotFound, message)
    }

    /// The path exists, the method does not.
    pub(crate) fn method_not_allowed(method: impl std::fmt::Display, path: &str) -> Self {
        Self::new(
            Kind::MethodNotAllowed,
            Code::MethodNotAllowed,
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
    pub(crate) fn code(&self) -> &'static str {
        self.code.as_str()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_snake_case_and_explained() {
        let mut seen = std::collections::HashSet::new();
        for c in Code::ALL {
            let name = c.as_str();
            assert!(seen.insert(name), "{name} twice");
            assert!(
                name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{name}"
            );
            assert!(!c.meaning().is_empty(), "{name} has no meaning");
            assert_eq!(serde_json::to_value(c).unwrap(), name);
        }
    }
}
