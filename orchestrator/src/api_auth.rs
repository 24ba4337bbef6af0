//! Who may call the HTTP API, and for which Host: a bearer token on every call but the two
//! public documents, and a Host allow-list against DNS rebinding. Every state-changing call
//! leaves an audit line (target `mose::audit`) naming the operator.

use std::net::IpAddr;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use mose_api::{ApiTokens, Reason};

use crate::api::ApiError;

/// Paths anyone may read: liveness and the API's description (nothing about the domain).
pub(crate) const PUBLIC_PATHS: [&str; 2] = ["/healthz", "/openapi.json"];

/// The HTTP API's access policy.
#[derive(Debug, Clone)]
pub struct ApiAuth {
    tokens: ApiTokens,
    /// Host names (no port) accepted besides IP literals and `localhost`.
    allowed_hosts: Vec<String>,
}

/// The operator a call was authenticated as (a request extension for the handlers).
#[derive(Debug, Clone)]
pub struct Caller(pub String);

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl ApiAuth {
    /// Tokens from `tokens`; `allowed_hosts` are the DNS names clients may use in `Host`.
    pub fn new(tokens: ApiTokens, allowed_hosts: Vec<String>) -> Self {
        Self {
            tokens,
            allowed_hosts: allowed_hosts
                .into_iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
        }
    }

    /// An IP literal cannot be rebound to another address by DNS, so it is always accepted;
    /// names only when listed (and `localhost`).
    fn host_allowed(&self, host: &str) -> bool {
        let name = strip_port(host).to_ascii_lowercase();
        name.trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok()
            || name == "localhost"
            || self.allowed_hosts.contains(&name)
    }
}

/// `host[:port]` or `[v6]:port` without the port.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_inclusive(']').next().unwrap_or(host);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.parse::<u16>().is_ok() => name,
        _ => host,
    }
}

/// The middleware: Host check, then the bearer token (except on [`PUBLIC_PATHS`]).
pub async fn authorize(
    State(auth): State<std::sync::Arc<ApiAuth>>,
    mut req: Request,
    next: Next,
) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    match host {
        Some(h) if auth.host_allowed(&h) => {}
        other => {
            return ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                Reason::HostNotAllowed,
                format!(
                    "this API does not answer for host {:?}; use its address or a name given \
                     with --api-allowed-host",
                    other.unwrap_or_default()
                ),
            )
            .into_response()
        }
    }
    if PUBLIC_PATHS.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented.and_then(|t| auth.tokens.operator_of(t.trim())) {
        Some(operator) => {
            req.extensions_mut().insert(Caller(operator.to_string()));
            next.run(req).await
        }
        None => {
            tracing::warn!(
                target: "mose::audit",
                method = %req.method(),
                path = req.uri().path(),
                token = presented.is_some(),
                "refused: no valid bearer token"
            );
            let mut response = ApiError::new(
                StatusCode::UNAUTHORIZED,
                Reason::Unauthorized,
                "this call needs a bearer token of the orchestrator's tokens file \
                 (mose: --token-file or MOSE_TOKEN)",
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mose_api::ApiToken;

    fn auth() -> ApiAuth {
        let token = ApiToken::parse("0123456789abcdef0123456789abcdef").unwrap();
        ApiAuth::new(ApiTokens::single("ops", token), vec!["MOSE.example".into()])
    }

    #[test]
    fn ip_literals_localhost_and_listed_names_are_allowed_hosts() {
        let a = auth();
        for ok in [
            "10.98.0.2:7070",
            "127.0.0.1",
            "[::1]:7070",
            "[fe80::1]",
            "localhost:7070",
            "mose.example:443",
            "Mose.Example",
        ] {
            assert!(a.host_allowed(ok), "{ok}");
        }
        for no in [
            "evil.example",
            "mose.example.evil",
            "",
            "localhost.evil:7070",
        ] {
            assert!(!a.host_allowed(no), "{no}");
        }
    }
}
