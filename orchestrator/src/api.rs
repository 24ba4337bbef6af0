//! The orchestrator's HTTP API, whose paths are fixed (documented in docs/protocol.md#http-api).
//!
//! JSON in and out; every error is an RFC 9457 problem document (`application/problem+json`)
//! with a 4xx/5xx status that says whose fault it is and a stable `reason`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
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

use crate::api_auth::{authorize, ApiAuth, Caller};
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
    /// Who may call, for which Host.
    pub auth: std::sync::Arc<ApiAuth>,
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

    /// A 400 for a query string that does not parse.
    fn bad_query(e: &QueryRejection) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            Reason::InvalidRequest,
            format!("invalid query: {}", e.body_text()),
        )
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

/// `GET /healthz`.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Health {
    /// Always `ok` when it answers.
    status: &'static str,
    /// The orchestrator's version.
    version: &'static str,
    /// Agents present.
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
        .layer(axum::middleware::from_fn_with_state(
            state.auth.clone(),
            authorize,
        ))
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

#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Up, with the number of agents present", body = Health)))]
pub(crate) async fn healthz(State(state): State<ApiState>) -> Json<Health> {
    Json(Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
        agents: state.agents.list().len(),
    })
}

#[utoipa::path(get, path = "/v1/agents", tag = "agents",
    responses((status = 200, description = "Agents present, with profile and latest metrics", body = [AgentView])))]
pub(crate) async fn list_agents(State(state): State<ApiState>) -> Json<Vec<AgentView>> {
    Json(state.agents.list())
}

#[utoipa::path(get, path = "/v1/agents/{id}", tag = "agents",
    params(("id" = String, Path, description = "the agent's id")),
    responses(
        (status = 200, description = "The agent", body = AgentView),
        (status = 404, description = "No such agent is present", body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn get_agent(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<AgentView>, ApiError> {
    state.agents.get(&id).map(Json).ok_or_else(|| {
        ApiError::not_found(Reason::NoSuchAgent, format!("no agent '{id}' is present"))
    })
}

#[utoipa::path(post, path = "/v1/services", tag = "services", request_body = DeployRequest,
    responses(
        (status = 201, description = "Deployed: address allocated, container started, mobiles steered", body = ServiceRecord),
        (status = 400, description = "Bad JSON or name, an agent in the wrong role", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Name taken, address pool exhausted, image missing on the host", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown agent", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "The host or a mobile failed the deployment (nothing is left)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "An agent has not finished probing", body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn deploy_service(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<DeployRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body.map_err(|e| ApiError::bad_body("deploy request", &e))?;
    let name = request.name.clone();
    let service = audit(
        &caller,
        "deploy",
        &name,
        state.services.deploy(request).await,
    )?;
    let location = format!("/v1/services/{}", service.name);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(service),
    )
        .into_response())
}

#[utoipa::path(get, path = "/v1/services", tag = "services",
    responses((status = 200, description = "Every service, by name", body = [ServiceRecord])))]
pub(crate) async fn list_services(
    State(state): State<ApiState>,
) -> Result<Json<Vec<ServiceRecord>>, ApiError> {
    Ok(Json(state.services.list()?))
}

#[utoipa::path(get, path = "/v1/services/{name}", tag = "services",
    params(("name" = String, Path, description = "the service's name")),
    responses(
        (status = 200, description = "The service with its live state (state size, dirty rate, clients)", body = ServiceView),
        (status = 404, description = "No such service", body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn get_service(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<ServiceView>, ApiError> {
    Ok(Json(state.services.view(&name).await?))
}

#[utoipa::path(delete, path = "/v1/services/{name}", tag = "services",
    params(("name" = String, Path, description = "the service's name")),
    responses(
        (status = 204, description = "Removed from its mobiles and its host; its address is free"),
        (status = 404, description = "No such service", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "It is migrating", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "Its host did not confirm (repeat the call)", body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn remove_service(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    audit(&caller, "remove", &name, state.services.remove(&name).await)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/migrations?dry_run=true`: plan only.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct SubmitParams {
    dry_run: bool,
}

#[utoipa::path(post, path = "/v1/migrations", tag = "migrations", request_body = MigrationRequest,
    params(("dry_run" = Option<bool>, Query, description = "plan only: answer the plan with its predictions (200), store and run nothing")),
    responses(
        (status = 201, description = "Accepted: the task with its plan (status queued)", body = TaskRecord),
        (status = 200, description = "With dry_run: the plan the migration would follow", body = TaskRecord),
        (status = 400, description = "Invalid request: bad JSON or id, source = destination, non-positive target, an agent in the wrong role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such service, and no source named", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already being migrated, or not where --from says", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown agent, or inputs the designer cannot plan with", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "The source did not answer Describe", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "An agent has joined but its profile is not known yet", body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn submit_migration(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    params: Result<Query<SubmitParams>, QueryRejection>,
    body: Result<Json<MigrationRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::bad_query(&e))?;
    // axum's own rejection is plain text; every error of this API is a problem document.
    let Json(request) = body.map_err(|e| ApiError::bad_body("migration request", &e))?;
    if params.dry_run {
        // The plan the migration would follow; nothing is stored or run.
        return Ok(Json(state.migrations.plan(request).await?).into_response());
    }
    let service = request.service.clone();
    let task = audit(
        &caller,
        "submit",
        &service,
        state.migrations.submit(request).await,
    )?;
    tracing::info!(target: "mose::audit", operator = %caller, task = %task.id, service, "task created");
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
pub(crate) struct ListParams {
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
#[utoipa::path(get, path = "/v1/migrations", tag = "migrations",
    params(
        ("service" = Option<String>, Query, description = "only this service's tasks"),
        ("status" = Option<TaskStatus>, Query, description = "only tasks in this status"),
        ("limit" = Option<usize>, Query, description = "at most this many (default 100, at most 1000)"),
        ("after" = Option<String>, Query, description = "continuation token from the previous page's Link header"),
    ),
    responses(
        (status = 200, description = "A page of tasks, newest first; `Link: <…>; rel=\"next\"` when there are more", body = [TaskRecord]),
        (status = 400, description = "A bad filter, limit or token", body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn list_migrations(
    State(state): State<ApiState>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(p) = params.map_err(|e| ApiError::bad_query(&e))?;
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

#[utoipa::path(get, path = "/v1/migrations/{id}", tag = "migrations",
    params(("id" = String, Path, description = "task id as returned by POST /v1/migrations")),
    responses(
        (status = 200, description = "One task: phase, status, plan and predictions, events, measurements", body = TaskRecord),
        (status = 404, description = "No such task", body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn get_migration(
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
#[utoipa::path(get, path = "/v1/migrations/{id}/events", tag = "migrations",
    params(("id" = String, Path, description = "task id")),
    responses(
        (status = 200, description = "Server-sent events: `phase` (id: the index in the task's events, data: the event), then `end` (data: the finished task); `lagged` for a reader that fell behind", content_type = "text/event-stream", body = String),
        (status = 404, description = "No such task", body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn migration_events(
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

#[utoipa::path(delete, path = "/v1/migrations/{id}", tag = "migrations",
    params(("id" = String, Path, description = "task id")),
    responses(
        (status = 202, description = "Cancel requested: it rolls back to the source; poll until cancelled", body = TaskRecord),
        (status = 404, description = "No such task", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Finished, or past the point of no return", body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn cancel_migration(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<TaskRecord>), ApiError> {
    let task = audit(&caller, "cancel", &id, state.migrations.cancel(&id))?;
    // Accepted, not done: the rollback runs in the driver; poll the task for its end.
    Ok((StatusCode::ACCEPTED, Json(task)))
}

/// The audit line of a state-changing call (`what` on `subject`, a service or task) and its
/// outcome; hands the result on.
fn audit<T, E: Into<ApiError>>(
    caller: &Caller,
    what: &str,
    subject: &str,
    result: Result<T, E>,
) -> Result<T, ApiError> {
    let result = result.map_err(Into::into);
    match &result {
        Ok(_) => {
            tracing::info!(target: "mose::audit", operator = %caller, call = what, subject, "accepted")
        }
        Err(e) => tracing::info!(
            target: "mose::audit",
            operator = %caller,
            call = what,
            subject,
            status = e.0.status,
            reason = %e.0.reason,
            "refused"
        ),
    }
    result
}

#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "This document (OpenAPI 3.1)", body = Object)))]
pub(crate) async fn openapi() -> Json<&'static serde_json::Value> {
    Json(crate::openapi::document())
}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition (docs/protocol.md#metrics)", content_type = "text/plain", body = String)))]
pub(crate) async fn metrics(State(state): State<ApiState>) -> Result<Response, ApiError> {
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
