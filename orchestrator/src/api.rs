//! The orchestrator's HTTP API, whose paths are fixed (documented in docs/protocol.md#http-api).
//!
//! JSON in and out; every error is an RFC 9457 problem document (`application/problem+json`)
//! with a 4xx/5xx status that says whose fault it is and a stable `reason`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::Stream;
use mose_api::{Problem, Reason, PROBLEM_JSON};
use mose_protocol::messages::PhaseEvent;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::registry::{AgentView, AgentsView};
use crate::services::{DeployRequest, ServiceRecord, ServiceView, Services};
use crate::tasks::{
    MigrationRequest, Migrations, TaskChange, TaskError, TaskFilter, TaskRecord, TaskStatus,
};

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

/// An error answer: a problem document (RFC 9457) with its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError(pub Problem);

impl ApiError {
    /// A problem of `status` and `reason`, explained by `detail`.
    pub fn new(status: StatusCode, reason: Reason, detail: impl Into<String>) -> Self {
        ApiError(Problem {
            kind: "about:blank".into(),
            title: crate::tasks::title_of(status.as_u16()).into(),
            status: status.as_u16(),
            detail: detail.into(),
            reason,
        })
    }

    /// A 404 with `reason`.
    pub fn not_found(reason: Reason, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, reason, detail)
    }

    /// A 400 for a body that is not the document expected.
    fn bad_body(what: &str, e: &JsonRejection) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            Reason::InvalidRequest,
            format!("invalid {what}: {}", e.body_text()),
        )
    }
}

impl From<TaskError> for ApiError {
    fn from(e: TaskError) -> Self {
        ApiError(e.problem())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, [(header::CONTENT_TYPE, PROBLEM_JSON)], Json(self.0)).into_response()
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
        .route("/v1/migrations/{id}/events", get(migration_events))
        .route("/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            ApiError::not_found(
                Reason::NoSuchEndpoint,
                "no such endpoint; see GET /openapi.json",
            )
        })
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
    state.agents.get(&id).map(Json).ok_or_else(|| {
        ApiError::not_found(Reason::NoSuchAgent, format!("no agent '{id}' is present"))
    })
}

async fn deploy_service(
    State(state): State<ApiState>,
    body: Result<Json<DeployRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body.map_err(|e| ApiError::bad_body("deploy request", &e))?;
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

/// `POST /v1/migrations?dry_run=true`: plan only.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct SubmitParams {
    dry_run: bool,
}

async fn submit_migration(
    State(state): State<ApiState>,
    params: Result<Query<SubmitParams>, QueryRejection>,
    body: Result<Json<MigrationRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            Reason::InvalidRequest,
            format!("invalid query: {}", e.body_text()),
        )
    })?;
    // axum's own rejection is plain text; every error of this API is a problem document.
    let Json(request) = body.map_err(|e| ApiError::bad_body("migration request", &e))?;
    if params.dry_run {
        // The plan the migration would follow; nothing is stored or run.
        return Ok(Json(state.migrations.plan(request).await?).into_response());
    }
    let task = state.migrations.submit(request).await?;
    let location = format!("/v1/migrations/{}", task.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(task),
    )
        .into_response())
}

/// `GET /v1/migrations?service=&status=&limit=&after=`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    service: Option<String>,
    status: Option<TaskStatus>,
    #[serde(default = "default_page")]
    limit: usize,
    after: Option<String>,
}

fn default_page() -> usize {
    DEFAULT_PAGE
}

/// Tasks per page when the caller does not say.
const DEFAULT_PAGE: usize = 100;

/// A page of tasks, newest first; a `Link: <…>; rel="next"` header points at the next page.
async fn list_migrations(
    State(state): State<ApiState>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(p) = params.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            Reason::InvalidRequest,
            format!("invalid query: {}", e.body_text()),
        )
    })?;
    let filter = TaskFilter {
        service: p.service.clone(),
        status: p.status,
        limit: p.limit,
        after: p.after,
    };
    let (tasks, next) = state.migrations.page(&filter)?;
    let mut response = Json(tasks).into_response();
    if let Some(token) = next {
        let mut query = format!("limit={}&after={token}", p.limit);
        if let Some(service) = &p.service {
            query.push_str(&format!("&service={service}"));
        }
        if let Some(status) = p.status {
            query.push_str(&format!("&status={status}"));
        }
        if let Ok(link) = format!("</v1/migrations?{query}>; rel=\"next\"").parse() {
            response.headers_mut().insert(header::LINK, link);
        }
    }
    Ok(response)
}

async fn get_migration(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<TaskRecord>, ApiError> {
    Ok(Json(state.migrations.get(&id)?))
}

/// `GET /v1/migrations/{id}/events`: server-sent events. Every phase event of the task from
/// the first (`event: phase`, `id:` its index in the task's `events`, data the event), then
/// each new one as the agents and the driver report it, and `event: end` with the finished
/// task, after which the stream closes. A client that falls too far behind gets `event:
/// lagged` and should read the task instead.
async fn migration_events(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let (record, changes) = state.migrations.watch(&id)?;
    let mut backlog: VecDeque<Event> = record
        .events
        .iter()
        .enumerate()
        .map(|(i, e)| phase_event(i, e))
        .collect();
    let done = record.status.is_finished();
    if done {
        backlog.push_back(end_event(&record));
    }
    let stream = EventStream {
        id,
        backlog,
        changes,
        next: record.events.len(),
        done,
    };
    Ok(Sse::new(futures::stream::unfold(stream, EventStream::next))
        .keep_alive(KeepAlive::default()))
}

/// The state of one event stream.
struct EventStream {
    id: String,
    backlog: VecDeque<Event>,
    changes: broadcast::Receiver<TaskChange>,
    /// The index of the next event not sent yet.
    next: usize,
    done: bool,
}

impl EventStream {
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        loop {
            if let Some(event) = self.backlog.pop_front() {
                return Some((Ok(event), self));
            }
            if self.done {
                return None;
            }
            match self.changes.recv().await {
                Ok(TaskChange::Event { task, index, event })
                    if task == self.id && index >= self.next =>
                {
                    self.next = index + 1;
                    return Some((Ok(phase_event(index, &event)), self));
                }
                Ok(TaskChange::Finished { record }) if record.id == self.id => {
                    self.done = true;
                    return Some((Ok(end_event(&record)), self));
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    self.done = true;
                    let note = format!(
                        "{missed} changes missed; read GET /v1/migrations/{}",
                        self.id
                    );
                    return Some((Ok(Event::default().event("lagged").data(note)), self));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

fn phase_event(index: usize, event: &PhaseEvent) -> Event {
    let data = serde_json::to_string(event).unwrap_or_default();
    Event::default()
        .event("phase")
        .id(index.to_string())
        .data(data)
}

fn end_event(record: &TaskRecord) -> Event {
    let data = serde_json::to_string(record).unwrap_or_default();
    Event::default().event("end").data(data)
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
    let services: Vec<_> = state
        .services
        .list()?
        .into_iter()
        .map(|s| {
            let moving = state.migrations.migrating(&s.name).is_some();
            (s, moving)
        })
        .collect();
    let now = crate::prometheus::Scrape {
        agents: &state.agents.list(),
        running: state.migrations.running(),
        services: &services,
    };
    let text = crate::prometheus::render(state.migrations.metrics(), &now);
    Ok((
        [(header::CONTENT_TYPE, crate::prometheus::CONTENT_TYPE)],
        text,
    )
        .into_response())
}
