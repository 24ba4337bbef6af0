//! The orchestrator's HTTP API, whose paths are fixed (documented in docs/protocol.md#http-api).
//!
//! JSON in and out; every error is `{"error": "..."}` with a 4xx/5xx status that says whose
//! fault it is.

use std::future::Future;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use mose_api::ErrorBody;
use serde::Serialize;

use crate::registry::{AgentView, AgentsView};
use crate::services::{DeployRequest, ServiceRecord, ServiceView, Services};
use crate::tasks::{MigrationRequest, Migrations, TaskError, TaskRecord};

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The live view of the agents.
    pub agents: AgentsView,
    /// Submission and inspection of migrations.
    pub migrations: Migrations,
    /// Deployment and removal of services.
    pub services: Services,
}

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status of the answer.
    pub status: StatusCode,
    /// The `error` of its body.
    pub message: String,
}

impl ApiError {
    /// A 404 with `message`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
        }
    }
}

impl From<TaskError> for ApiError {
    fn from(e: TaskError) -> Self {
        Self {
            status: StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            message: e.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response()
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
        .route("/v1/services", get(list_services).post(deploy_service))
        .route(
            "/v1/services/{name}",
            get(get_service).delete(remove_service),
        )
        .route(
            "/v1/migrations",
            get(list_migrations).post(submit_migration),
        )
        .route(
            "/v1/migrations/{id}",
            get(get_migration).delete(cancel_migration),
        )
        .route("/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::not_found("no such endpoint; see GET /openapi.json") })
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

async fn deploy_service(
    State(state): State<ApiState>,
    body: Result<Json<DeployRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body.map_err(|e| ApiError {
        status: StatusCode::BAD_REQUEST,
        message: format!("invalid deploy request: {}", e.body_text()),
    })?;
    let service = state.services.deploy(request).await?;
    let location = format!("/v1/services/{}", service.name);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(service),
    )
        .into_response())
}

async fn list_services(
    State(state): State<ApiState>,
) -> Result<Json<Vec<ServiceRecord>>, ApiError> {
    Ok(Json(state.services.list()?))
}

async fn get_service(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<ServiceView>, ApiError> {
    Ok(Json(state.services.view(&name).await?))
}

async fn remove_service(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.services.remove(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn submit_migration(
    State(state): State<ApiState>,
    body: Result<Json<MigrationRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    // axum's own rejection is plain text; every error of this API is {"error": ...}.
    let Json(request) = body.map_err(|e| ApiError {
        status: StatusCode::BAD_REQUEST,
        message: format!("invalid migration request: {}", e.body_text()),
    })?;
    let task = state.migrations.submit(request).await?;
    let location = format!("/v1/migrations/{}", task.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(task),
    )
        .into_response())
}

async fn list_migrations(State(state): State<ApiState>) -> Result<Json<Vec<TaskRecord>>, ApiError> {
    Ok(Json(state.migrations.list()?))
}

async fn get_migration(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<TaskRecord>, ApiError> {
    Ok(Json(state.migrations.get(&id)?))
}

async fn cancel_migration(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<TaskRecord>), ApiError> {
    // Accepted, not done: the rollback runs in the driver; poll the task for its end.
    Ok((StatusCode::ACCEPTED, Json(state.migrations.cancel(&id)?)))
}

async fn openapi() -> Json<serde_json::Value> {
    Json(crate::openapi::document())
}

async fn metrics(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let text = crate::prometheus::render(&state.agents.list(), &state.migrations.list()?);
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}
