//! The orchestrator's HTTP API (SPEC §8; documented in docs/protocol.md).
//!
//! JSON in and out; every error is `{"error": "..."}` with a 4xx/5xx status that says whose
//! fault it is.

use std::future::Future;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::registry::{AgentView, AgentsView};

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub agents: AgentsView,
}

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(ErrorBody { error: &self.message })).into_response()
    }
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    version: &'static str,
    agents: usize,
}

/// The routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/agents", get(list_agents))
        .route("/v1/agents/{id}", get(get_agent))
        .fallback(|| async { ApiError::not_found("no such endpoint; see GET /healthz, /v1/agents") })
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn healthz(State(state): State<ApiState>) -> Json<Health> {
    Json(Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
        agents: state.agents.list().len(),
    })
}

async fn list_agents(State(state): State<ApiState>) -> Json<Vec<AgentView>> {
    Json(state.agents.list())
}

async fn get_agent(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<AgentView>, ApiError> {
    state
        .agents
        .get(&id)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no agent '{id}' is present")))
}
