//! `/openapi.json` (the OpenAPI 3.1 description of the whole HTTP API, `openapi.json` beside this
//! file, with `info.version` set to the build version at serve time) and `/docs` (an offline
//! documentation page that renders it: the page and its assets are embedded, no CDN).

use super::error::{ApiError, Kind};
use std::sync::OnceLock;
use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;

const SPEC: &str = include_str!("openapi.json");
const INDEX_HTML: &str = include_str!("docs/index.html");
const APP_JS: &str = include_str!("docs/app.js");
const STYLE_CSS: &str = include_str!("docs/style.css");

/// The docs only ever load from the daemon itself.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `info.version` in the embedded file, replaced by the build version when served.
const VERSION_PLACEHOLDER: &str = r#""version": "0.0.0""#;

/// The document as served: the embedded file (its key order kept: paths in reading order) with
/// `info.version` = this build's version.
pub(crate) fn document() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        let version = serde_json::Value::from(clinvk_shared::VERSION);
        SPEC.replacen(VERSION_PLACEHOLDER, &format!(r#""version": {version}"#), 1)
    })
}

fn text(body: &'static str, content_type: &'static str, csp: bool) -> Response {
    let mut resp = Response::new(body.into());
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert("content-type", HeaderValue::from_static(content_type));
    h.insert("cache-control", HeaderValue::from_static("no-cache"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    if csp {
        h.insert("content-security-policy", HeaderValue::from_static(CSP));
    }
    resp
}

/// `GET /openapi.json`.
pub(crate) fn spec() -> Response {
    text(document(), "application/json", false)
}

/// `GET /docs`.
pub(crate) fn docs_page() -> Response {
    text(INDEX_HTML, "text/html; charset=utf-8", true)
}

/// `GET /docs/{asset}`: the page's script and style sheet; anything else is 404.
pub(crate) fn asset(name: &str) -> Result<Response, ApiError> {
    match name {
        "app.js" => Ok(text(APP_JS, "text/javascript; charset=utf-8", true)),
        "style.css" => Ok(text(STYLE_CSS, "text/css; charset=utf-8", true)),
        _ => Err(ApiError::new(
            Kind::NotFound,
            "not_found",
            format!("no docs asset {name:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn doc() -> Value {
        serde_json::from_str(document()).expect("openapi.json is valid JSON")
    }

    #[test]
    fn is_openapi_31_with_the_build_version() {
        let raw: Value = serde_json::from_str(SPEC).expect("openapi.json is valid JSON");
        assert_eq!(raw["info"]["version"], "0.0.0");
        assert_eq!(SPEC.matches(VERSION_PLACEHOLDER).count(), 1);
        let d = doc();
        assert_eq!(d["openapi"], "3.1.0");
        assert_eq!(d["info"]["version"], clinvk_shared::VERSION);
        let schemes = &d["components"]["securitySchemes"];
        assert_eq!(schemes["bearerAuth"]["scheme"], "bearer");
        assert_eq!(schemes["apiKeyHeader"]["name"], "X-Api-Key");
        // Keys are optional: the empty requirement is one of the alternatives.
        assert!(d["security"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s.as_object().is_some_and(|o| o.is_empty())));
    }

    /// The route table and the document agree: every route (method and template) is
    /// documented, and every documented operation is a route.
    #[test]
    fn documents_every_route() {
        use super::super::routes::ROUTES;
        let d = doc();
        let paths = d["paths"].as_object().unwrap();
        let doc_template = |t: &str| t.replace("*}", "}");
        for r in &ROUTES {
            let t = doc_template(r.template);
            let method = r.method.as_str().to_ascii_lowercase();
            assert!(
                paths.get(&t).and_then(|p| p.get(&method)).is_some(),
                "{} {} is not in openapi.json",
                r.method,
                r.template
            );
        }
        for (p, item) in paths {
            let methods = ["get", "post", "put", "patch", "delete", "head", "options"];
            for method in item.as_object().unwrap().keys() {
                if !methods.contains(&method.as_str()) {
                    continue; // `parameters`, `summary`: not operations
                }
                assert!(
                    ROUTES.iter().any(|r| doc_template(r.template) == *p
                        && r.method.as_str().eq_ignore_ascii_case(method)),
                    "documented {method} {p} is not a route"
                );
            }
        }
    }

    #[test]
    fn refs_resolve_and_operations_are_complete() {
        let d = doc();
        fn walk(d: &Value, v: &Value) {
            match v {
                Value::Object(o) => {
                    if let Some(Value::String(r)) = o.get("$ref") {
                        let ptr = r.strip_prefix('#').expect("local $ref");
                        assert!(d.pointer(ptr).is_some(), "dangling $ref {r}");
                    }
                    o.values().for_each(|v| walk(d, v));
                }
                Value::Array(a) => a.iter().for_each(|v| walk(d, v)),
                _ => {}
            }
        }
        walk(&d, &d);
        let mut ids = std::collections::HashSet::new();
        for (path, item) in d["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                if method == "parameters" {
                    continue;
                }
                assert!(op["summary"].is_string(), "{method} {path}: summary");
                assert!(op["tags"][0].is_string(), "{method} {path}: tag");
                assert!(
                    ids.insert(op["operationId"].as_str().unwrap().to_string()),
                    "{method} {path}: operationId"
                );
                let responses = op["responses"].as_object().unwrap();
                assert!(
                    responses.keys().any(|s| s.starts_with('2')),
                    "{method} {path}: no success response"
                );
            }
        }
    }

    #[test]
    fn streaming_and_error_responses_are_described() {
        let d = doc();
        let p = &d["paths"];
        let ok = |path: &str| p[path]["post"]["responses"]["200"]["content"].clone();
        assert!(ok("/api/v1/prompt")["application/x-ndjson"].is_object());
        assert!(ok("/openai/v1/chat/completions")["text/event-stream"].is_object());
        assert!(ok("/anthropic/v1/messages")["text/event-stream"].is_object());
        for (path, style) in [
            ("/openai/v1/chat/completions", "OpenAI"),
            ("/anthropic/v1/messages", "Anthropic"),
        ] {
            for code in ["400", "401", "404", "413", "429", "502", "503", "504"] {
                assert_eq!(
                    p[path]["post"]["responses"][code]["$ref"],
                    format!("#/components/responses/{style}{code}"),
                    "{path} {code}"
                );
            }
        }
    }

    #[test]
    fn assets() {
        assert_eq!(
            asset("app.js").unwrap().headers()["content-type"],
            "text/javascript; charset=utf-8"
        );
        assert_eq!(
            asset("style.css").unwrap().headers()["content-type"],
            "text/css; charset=utf-8"
        );
        assert_eq!(asset("nope.js").unwrap_err().kind, Kind::NotFound);
        for body in [INDEX_HTML, APP_JS, STYLE_CSS] {
            assert!(
                !body.contains("http://") && !body.contains("https://"),
                "docs assets must not load anything from elsewhere"
            );
        }
    }
}
