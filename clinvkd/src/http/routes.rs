//! The one route table. Dispatch, 404 versus 405, the `path` label of the metrics, which routes
//! need no key, and the check that `/openapi.json` documents exactly these routes all read it;
//! adding a route is one line here (plus its handler and its documentation).

use warp::http::Method;

/// What a route does (the dispatcher's `match` over it is exhaustive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Health,
    Metrics,
    OpenApi,
    Docs,
    DocsAsset,
    Prompt,
    Parallel,
    Chain,
    Compare,
    Backends,
    Accounts,
    SessionsList,
    SessionGet,
    SessionDelete,
    OpenAiModels,
    OpenAiModel,
    OpenAiChat,
    OpenAiResponses,
    OpenAiResponseGet,
    OpenAiResponseDelete,
    AnthropicMessages,
    AnthropicCountTokens,
    AnthropicModels,
    AnthropicModel,
    Ui,
    UiAsset,
    Usage,
    Live,
    RunCancel,
    KeysList,
    KeysAdd,
    KeysRevoke,
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Never needs a key (`/health` then says only its status).
    Public,
    /// Needs a key when auth is on and `server.metrics_require_auth` (default) is set.
    Metrics,
    /// Needs a key when auth is on, of scope `read` or more (lists, reports).
    Read,
    /// Needs a key when auth is on, of scope `use` or more (runs, changes).
    Key,
    /// Needs a key when auth is on, of scope `admin` (key management).
    Admin,
}

impl Access {
    /// The scope a key needs (None: no key needed).
    pub(crate) fn scope(self) -> Option<clinvk_shared::api::Scope> {
        use clinvk_shared::api::Scope;
        match self {
            Access::Public | Access::Metrics => None,
            Access::Read => Some(Scope::Read),
            Access::Key => Some(Scope::Use),
            Access::Admin => Some(Scope::Admin),
        }
    }
}

/// One route: a method and a path template. `{name}` matches one path segment; `{name*}` the
/// rest of the path (one segment or more).
#[derive(Debug)]
pub(crate) struct Route {
    pub(crate) method: Method,
    pub(crate) template: &'static str,
    pub(crate) op: Op,
    pub(crate) access: Access,
}

const fn route(method: Method, template: &'static str, op: Op, access: Access) -> Route {
    Route {
        method,
        template,
        op,
        access,
    }
}

use Access::{Admin, Key, Metrics, Public, Read};

/// Every route the server answers.
pub(crate) static ROUTES: [Route; 32] = [
    route(Method::GET, "/health", Op::Health, Public),
    route(Method::GET, "/metrics", Op::Metrics, Metrics),
    route(Method::GET, "/openapi.json", Op::OpenApi, Public),
    route(Method::GET, "/docs", Op::Docs, Public),
    route(Method::GET, "/docs/{asset}", Op::DocsAsset, Public),
    route(Method::POST, "/api/v1/prompt", Op::Prompt, Key),
    route(Method::POST, "/api/v1/parallel", Op::Parallel, Key),
    route(Method::POST, "/api/v1/chain", Op::Chain, Key),
    route(Method::POST, "/api/v1/compare", Op::Compare, Key),
    route(Method::GET, "/api/v1/backends", Op::Backends, Read),
    route(Method::GET, "/api/v1/accounts", Op::Accounts, Read),
    route(Method::GET, "/api/v1/sessions", Op::SessionsList, Read),
    route(Method::GET, "/api/v1/sessions/{id}", Op::SessionGet, Read),
    route(
        Method::DELETE,
        "/api/v1/sessions/{id}",
        Op::SessionDelete,
        Key,
    ),
    route(Method::GET, "/openai/v1/models", Op::OpenAiModels, Key),
    route(Method::GET, "/openai/v1/models/{id*}", Op::OpenAiModel, Key),
    route(
        Method::POST,
        "/openai/v1/chat/completions",
        Op::OpenAiChat,
        Key,
    ),
    route(
        Method::POST,
        "/openai/v1/responses",
        Op::OpenAiResponses,
        Key,
    ),
    route(
        Method::GET,
        "/openai/v1/responses/{id}",
        Op::OpenAiResponseGet,
        Key,
    ),
    route(
        Method::DELETE,
        "/openai/v1/responses/{id}",
        Op::OpenAiResponseDelete,
        Key,
    ),
    route(
        Method::POST,
        "/anthropic/v1/messages",
        Op::AnthropicMessages,
        Key,
    ),
    route(
        Method::POST,
        "/anthropic/v1/messages/count_tokens",
        Op::AnthropicCountTokens,
        Key,
    ),
    route(
        Method::GET,
        "/anthropic/v1/models",
        Op::AnthropicModels,
        Key,
    ),
    route(
        Method::GET,
        "/anthropic/v1/models/{id*}",
        Op::AnthropicModel,
        Key,
    ),
    route(Method::GET, "/ui", Op::Ui, Public),
    route(Method::GET, "/ui/{asset}", Op::UiAsset, Public),
    route(Method::GET, "/api/v1/usage", Op::Usage, Read),
    route(Method::GET, "/api/v1/live", Op::Live, Read),
    route(Method::POST, "/api/v1/runs/{id}/cancel", Op::RunCancel, Key),
    route(Method::GET, "/api/v1/keys", Op::KeysList, Admin),
    route(Method::POST, "/api/v1/keys", Op::KeysAdd, Admin),
    route(Method::DELETE, "/api/v1/keys/{id}", Op::KeysRevoke, Admin),
];

/// The metric label of a path no route matches.
pub(crate) const UNMATCHED: &str = "unmatched";

/// What the table says about a request.
#[derive(Debug)]
pub(crate) enum Lookup {
    /// The route, with its parameters (percent-decoded) in template order.
    Route(&'static Route, Vec<String>),
    /// The path is a route's, the method is not: 405.
    WrongMethod(&'static str),
    /// 404.
    NotFound,
}

impl Lookup {
    /// The template for the metric label (never the raw path: ids would explode the series).
    pub(crate) fn template(&self) -> &'static str {
        match self {
            Lookup::Route(r, _) => r.template,
            Lookup::WrongMethod(t) => t,
            Lookup::NotFound => UNMATCHED,
        }
    }

    /// Who may call it; an unknown path needs a key like any API path (401 before 404).
    pub(crate) fn access(&self) -> Access {
        match self {
            Lookup::Route(r, _) => r.access,
            _ => Access::Key,
        }
    }
}

/// The parameters of `path` under `template`, or None when it does not match.
fn matches(template: &str, path: &str) -> Option<Vec<String>> {
    let want: Vec<&str> = template.trim_matches('/').split('/').collect();
    let got: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let mut params = Vec::new();
    for (i, w) in want.iter().enumerate() {
        if let Some(name) = w.strip_prefix('{').and_then(|w| w.strip_suffix('}')) {
            if name.ends_with('*') {
                let rest = got.get(i..).filter(|r| !r.is_empty())?;
                params.push(percent_decode(&rest.join("/"), false));
                return Some(params);
            }
            params.push(percent_decode(got.get(i)?, false));
        } else if got.get(i) != Some(w) {
            return None;
        }
    }
    (got.len() == want.len()).then_some(params)
}

/// The Anthropic SDKs append `/v1/messages` to their base URL; with the base URL
/// `…/anthropic/v1` (a common form, and the one clinvk's first docs showed) the path becomes
/// `/anthropic/v1/v1/messages`. That doubled prefix is served as the single one.
const ANTHROPIC_DOUBLED: &str = "/anthropic/v1/v1/";

/// Looks a request up in the table.
pub(crate) fn find(method: &Method, path: &str) -> Lookup {
    let path = match path.strip_prefix(ANTHROPIC_DOUBLED) {
        Some(rest) => std::borrow::Cow::Owned(format!("/anthropic/v1/{rest}")),
        None => std::borrow::Cow::Borrowed(path),
    };
    let path = path.as_ref();
    let mut wrong_method = None;
    for r in &ROUTES {
        if let Some(params) = matches(r.template, path) {
            if r.method == *method {
                return Lookup::Route(r, params);
            }
            wrong_method.get_or_insert(r.template);
        }
    }
    wrong_method.map_or(Lookup::NotFound, Lookup::WrongMethod)
}

/// The one percent-decoder (paths; queries with `plus_is_space`). Invalid escapes stay as they
/// are; invalid UTF-8 is replaced.
pub(crate) fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b'+', _, _) if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups() {
        let Lookup::Route(r, p) = find(&Method::GET, "/api/v1/sessions/abc%2Fd") else {
            panic!("not found")
        };
        assert_eq!((r.op, p), (Op::SessionGet, vec!["abc/d".to_string()]));
        let Lookup::Route(r, p) = find(&Method::GET, "/openai/v1/models/claude/sonnet") else {
            panic!("not found")
        };
        assert_eq!(
            (r.op, p),
            (Op::OpenAiModel, vec!["claude/sonnet".to_string()])
        );
        assert!(
            matches!(find(&Method::GET, "/api/v1/sessions/"), Lookup::Route(r, _) if r.op == Op::SessionsList)
        );
        assert!(matches!(
            find(&Method::PUT, "/api/v1/prompt"),
            Lookup::WrongMethod("/api/v1/prompt")
        ));
        assert!(matches!(
            find(&Method::GET, "/api/v1/nope"),
            Lookup::NotFound
        ));
        assert!(
            matches!(find(&Method::GET, "/openai/v1/models/"), Lookup::Route(r, _) if r.op == Op::OpenAiModels)
        );
        assert_eq!(find(&Method::GET, "/x/y").template(), UNMATCHED);
        // Both Anthropic base URL conventions.
        for path in ["/anthropic/v1/messages", "/anthropic/v1/v1/messages"] {
            assert!(
                matches!(find(&Method::POST, path), Lookup::Route(r, _) if r.op == Op::AnthropicMessages),
                "{path}"
            );
        }
        assert!(
            matches!(find(&Method::POST, "/anthropic/v1/v1/messages/count_tokens"), Lookup::Route(r, _) if r.op == Op::AnthropicCountTokens)
        );
        assert_eq!(find(&Method::GET, "/health").access(), Access::Public);
        assert_eq!(find(&Method::GET, "/nope").access(), Access::Key);
    }

    #[test]
    fn decoding() {
        assert_eq!(percent_decode("a%20b+c", true), "a b c");
        assert_eq!(percent_decode("a+b%zz", false), "a+b%zz");
    }
}
