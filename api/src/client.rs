//! [`ApiClient`]: the orchestrator's HTTP API from the caller's side (the `mose` CLI, the
//! testbed), with the server's `{"error": ...}` answers decoded into [`ClientError`].

use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;
use thiserror::Error;

use crate::agents::AgentView;
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
    #[error("{url}: {status}: {message}")]
    Api {
        /// The URL called.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The `error` of the answer's body, or the body itself.
        message: String,
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

/// A client of one orchestrator's HTTP API.
pub struct ApiClient {
    base: String,
    http: reqwest::Client,
}

impl ApiClient {
    /// `base` like `http://127.0.0.1:7070`.
    pub fn new(base: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
        }
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

    /// `GET /v1/migrations/{id}`.
    pub async fn migration(&self, id: &str) -> Result<TaskRecord, ClientError> {
        self.get(&format!("/v1/migrations/{id}")).await
    }

    /// Plans and starts a migration; the answer is the accepted task with its plan.
    pub async fn submit(&self, request: &MigrationRequest) -> Result<TaskRecord, ClientError> {
        self.json(Method::POST, "/v1/migrations", Some(request))
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
            // Our API answers {"error": "..."}; anything else is shown as text.
            let message = serde_json::from_slice::<ErrorBody>(&body)
                .map(|b| b.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            return Err(ClientError::Api {
                url,
                status: status.as_u16(),
                message,
            });
        }
        Ok((url, body.to_vec()))
    }
}

/// Every error answer of the API: `{"error": "..."}` with a 4xx/5xx status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ErrorBody {
    /// What went wrong, in one sentence.
    pub error: String,
}
