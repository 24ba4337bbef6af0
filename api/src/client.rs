//! [`ApiClient`]: the orchestrator's HTTP API from the caller's side (the `mose` CLI, the
//! testbed), with the server's problem answers decoded into [`ClientError`].

use std::time::Duration;

use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;
use thiserror::Error;

use crate::agents::AgentView;
use crate::auth::ApiToken;
use crate::events::EventStream;
use crate::problem::{Problem, Reason};
use crate::services::{DeployRequest, ServiceRecord, ServiceView};
use crate::tasks::{MigrationRequest, TaskRecord};

/// A failed API call.
#[derive(Debug, Error)]
pub enum ClientError {
    /// No HTTP answer came back (connection refused, DNS, timeout).
    #[error("cannot reach the orchestrator at {url}: {reason} (is mose-orchestrator running? see --api)")]
    Unreachable {
        /// The URL called.
        url: String,
        /// The transport's message.
        reason: String,
    },
    /// The orchestrator answered with an error status.
    #[error("{url}: {status}{}: {message}", reason.map(|r| format!(" ({r})")).unwrap_or_default())]
    Api {
        /// The URL called.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The `detail` of the problem answered, or the body itself.
        message: String,
        /// The problem's reason, when the answer was one.
        reason: Option<Reason>,
    },
    /// The answer was not the JSON expected.
    #[error("{url}: unexpected answer: {reason}")]
    Decode {
        /// The URL called.
        url: String,
        /// What did not decode.
        reason: String,
    },
}

/// How long one API call may take. Submitting a migration includes the source's Describe,
/// deploying a service its container's start: seconds, far below this.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// How long connecting to the orchestrator may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A client of one orchestrator's HTTP API.
pub struct ApiClient {
    base: String,
    http: reqwest::Client,
    /// For event streams: no overall limit (a migration may take minutes), an idle one instead
    /// ([`crate::events::IDLE_TIMEOUT`]).
    streams: reqwest::Client,
}

impl ApiClient {
    /// `base` like `http://127.0.0.1:7070`; every call carries `token` as its bearer
    /// credential (without one, only `/healthz` and `/openapi.json` answer). Every call gives up
    /// after [`CALL_TIMEOUT`] (connecting after [`CONNECT_TIMEOUT`]): an orchestrator that
    /// hangs is reported, not waited for forever.
    pub fn new(base: &str, token: Option<&ApiToken>) -> Self {
        let mut headers = reqwest::header::HeaderMap::new();
        // A parsed token holds only header-safe characters.
        if let Some(value) = token.and_then(|t| {
            reqwest::header::HeaderValue::from_str(&format!("Bearer {}", t.expose())).ok()
        }) {
            let mut value = value;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let builder = || {
            reqwest::Client::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .default_headers(headers.clone())
        };
        // Only a TLS backend failing to initialise makes a builder fail; none is used.
        let http = builder().timeout(CALL_TIMEOUT).build().unwrap_or_default();
        let streams = builder().build().unwrap_or_default();
        Self {
            base: base.trim_end_matches('/').to_string(),
            http,
            streams,
        }
    }

    /// `POST /v1/services`: deploys a service; the answer is its record, address allocated.
    pub async fn deploy(&self, request: &DeployRequest) -> Result<ServiceRecord, ClientError> {
        self.json(Method::POST, "/v1/services", Some(request)).await
    }

    /// `GET /v1/services`: every service, by name.
    pub async fn services(&self) -> Result<Vec<ServiceRecord>, ClientError> {
        self.get("/v1/services").await
    }

    /// `GET /v1/services/{name}`: the record with what its host reports now.
    pub async fn service(&self, name: &str) -> Result<ServiceView, ClientError> {
        self.get(&format!("/v1/services/{name}")).await
    }

    /// `DELETE /v1/services/{name}`: removes the service from its host and its mobiles.
    pub async fn remove_service(&self, name: &str) -> Result<(), ClientError> {
        self.call(Method::DELETE, &format!("/v1/services/{name}"), None::<&()>)
            .await
            .map(drop)
    }

    /// `GET /v1/agents`: every agent the orchestrator knows.
    pub async fn agents(&self) -> Result<Vec<AgentView>, ClientError> {
        self.get("/v1/agents").await
    }

    /// `GET /v1/agents/{id}`.
    pub async fn agent(&self, id: &str) -> Result<AgentView, ClientError> {
        self.get(&format!("/v1/agents/{id}")).await
    }

    /// `GET /v1/migrations`: every task, newest first.
    pub async fn migrations(&self) -> Result<Vec<TaskRecord>, ClientError> {
        self.get("/v1/migrations").await
    }

    /// `GET /v1/migrations?…`: one page of tasks (newest first) matching `query` (pairs such
    /// as `("service", "redis")`, `("status", "running")`, `("limit", "20")`, `("after",
    /// token)`), and the token of the next page from the answer's `Link` header.
    pub async fn migrations_page(
        &self,
        query: &[(&str, &str)],
    ) -> Result<(Vec<TaskRecord>, Option<String>), ClientError> {
        let url = format!("{}/v1/migrations", self.base);
        let unreachable = |e: reqwest::Error| ClientError::Unreachable {
            url: url.clone(),
            reason: e.to_string(),
        };
        let response = self
            .http
            .get(&url)
            .query(query)
            .send()
            .await
            .map_err(unreachable)?;
        let next = response
            .headers()
            .get(reqwest::header::LINK)
            .and_then(|l| l.to_str().ok())
            .and_then(next_token);
        let status = response.status();
        let body = response.bytes().await.map_err(unreachable)?;
        if !status.is_success() {
            return Err(api_error(url, status.as_u16(), &body));
        }
        let tasks = serde_json::from_slice(&body).map_err(|e| ClientError::Decode {
            url,
            reason: e.to_string(),
        })?;
        Ok((tasks, next))
    }

    /// `GET /v1/migrations/{id}`.
    pub async fn migration(&self, id: &str) -> Result<TaskRecord, ClientError> {
        self.get(&format!("/v1/migrations/{id}")).await
    }

    /// `GET /v1/migrations/{id}/events`: every event of the task so far, then each new one as
    /// it happens, then its end ([`crate::MigrationEvent`]).
    pub async fn events(&self, id: &str) -> Result<EventStream, ClientError> {
        let url = format!("{}/v1/migrations/{id}/events", self.base);
        let response = tokio::time::timeout(CALL_TIMEOUT, self.streams.get(&url).send())
            .await
            .map_err(|_| ClientError::Unreachable {
                url: url.clone(),
                reason: format!("no answer in {} s", CALL_TIMEOUT.as_secs()),
            })?
            .map_err(|e| ClientError::Unreachable {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let status = response.status();
        if !status.is_success() {
            let body = response.bytes().await.unwrap_or_default();
            return Err(api_error(url, status.as_u16(), &body));
        }
        Ok(EventStream::new(url, response))
    }

    /// Plans and starts a migration; the answer is the accepted task with its plan.
    pub async fn submit(&self, request: &MigrationRequest) -> Result<TaskRecord, ClientError> {
        self.json(Method::POST, "/v1/migrations", Some(request))
            .await
    }

    /// The plan a migration would follow, with its predictions, without running it.
    pub async fn plan(&self, request: &MigrationRequest) -> Result<TaskRecord, ClientError> {
        self.json(Method::POST, "/v1/migrations?dry_run=true", Some(request))
            .await
    }

    /// Asks a running migration to roll back.
    pub async fn cancel(&self, id: &str) -> Result<TaskRecord, ClientError> {
        self.json(Method::DELETE, &format!("/v1/migrations/{id}"), None::<&()>)
            .await
    }

    /// A non-JSON document, such as `/metrics`.
    pub async fn text(&self, path: &str) -> Result<String, ClientError> {
        let (_, body) = self.call(Method::GET, path, None::<&()>).await?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.json(Method::GET, path, None::<&()>).await
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let (url, bytes) = self.call(method, path, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            url,
            reason: e.to_string(),
        })
    }

    /// Sends a request; a non-2xx answer becomes [`ClientError::Api`] with the server's message.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<(String, Vec<u8>), ClientError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url);
        if let Some(body) = body {
            request = request.json(body);
        }
        let unreachable = |e: reqwest::Error| ClientError::Unreachable {
            url: url.clone(),
            reason: e.to_string(),
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        let body = response.bytes().await.map_err(unreachable)?;
        if !status.is_success() {
            return Err(api_error(url, status.as_u16(), &body));
        }
        Ok((url, body.to_vec()))
    }
}

/// The error of a non-2xx answer: our API answers problem details; anything else is shown as
/// text.
fn api_error(url: String, status: u16, body: &[u8]) -> ClientError {
    let (message, reason) = match serde_json::from_slice::<Problem>(body) {
        Ok(p) => (p.detail, Some(p.reason)),
        Err(_) => (String::from_utf8_lossy(body).into_owned(), None),
    };
    ClientError::Api {
        url,
        status,
        message,
        reason,
    }
}

/// The `after` token of a `Link: <…&after=TOKEN…>; rel="next"` header.
fn next_token(link: &str) -> Option<String> {
    let target = link.split(';').next()?.trim();
    let query = target
        .strip_prefix('<')?
        .strip_suffix('>')?
        .split_once('?')?
        .1;
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("after="))
        .map(String::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_page_token_comes_from_the_link_header() {
        assert_eq!(
            next_token("</v1/migrations?limit=2&after=17.m1-0&status=running>; rel=\"next\""),
            Some("17.m1-0".into())
        );
        assert_eq!(next_token("garbage"), None);
    }
}
