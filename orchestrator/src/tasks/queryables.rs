//! The task and service calls over Zenoh (`{prefix}/orchestrator/rpc/{op}`), mapped onto
//! [`Migrations`] and [`Services`].
//!
//! Payloads are JSON, the same documents as the HTTP API (docs/protocol.md):
//!
//! | op | query payload | reply |
//! |---|---|---|
//! | `submit` | a migration request | the accepted task |
//! | `inspect` | `{"id": "..."}` | the task |
//! | `list` | none | every task, newest first |
//! | `cancel` | `{"id": "..."}` | the task, rolling back |
//! | `deploy` | a deploy request | the running service |
//! | `services` | none | every service |
//! | `service` | `{"name": "..."}` | the service with its live state |
//! | `remove` | `{"name": "..."}` | `null` once removed |
//!
//! A refused call gets an error reply: the problem document the HTTP API answers.

use serde::{Deserialize, Serialize};
use tracing::{debug, warn};
use zenoh::query::Query;
use zenoh::Session;

use super::{Migrations, TaskError};
use crate::services::Services;
use mose_protocol::transport::QueryService;
use mose_protocol::KeySpace;

/// The operations served, which are also the last key chunk.
pub const OPS: [&str; 8] = [
    "submit", "inspect", "list", "cancel", "deploy", "services", "service", "remove",
];

/// `inspect` and `cancel` name one task.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskRef {
    /// The task's id.
    pub id: String,
}

/// `service` and `remove` name one service.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRef {
    /// The service's name.
    pub name: String,
}

/// Serves the queryables while it lives.
pub struct QueryServer {
    _service: QueryService,
}

impl QueryServer {
    /// Declares the task queryables under `keys`.
    pub async fn start(
        session: &Session,
        keys: &KeySpace,
        migrations: Migrations,
        services: Services,
    ) -> Result<Self, TaskError> {
        let key = keys.orchestrator_rpc("*");
        let space: std::sync::Arc<str> = keys.orchestrator_rpc_space().into();
        let service = QueryService::start(session, &key, move |query| {
            answer(query, space.clone(), migrations.clone(), services.clone())
        })
        .await
        .map_err(|e| TaskError::Internal(format!("cannot declare queryable {key}: {e}")))?;
        Ok(Self { _service: service })
    }
}

async fn answer(
    query: Query,
    space: std::sync::Arc<str>,
    migrations: Migrations,
    services: Services,
) {
    let key = query.key_expr().clone();
    let payload = query
        .payload()
        .map(|p| p.to_bytes().into_owned())
        .unwrap_or_default();
    let op = mose_protocol::keys::exact_rpc_op(key.as_str(), &space)
        .unwrap_or_default()
        .to_string();
    let result = match op.is_empty() {
        // A wildcard must not run a call (one query could submit or cancel for every domain).
        true => Err(TaskError::Invalid(format!(
            "a call must name {space}/<call> exactly, not {key}"
        ))),
        false => call(&migrations, &services, &op, &payload).await,
    };
    let sent = match result {
        Ok(json) => query.reply(key, json).await,
        Err(e) => {
            // The same problem document the HTTP API answers.
            let problem = e.problem();
            let text = serde_json::to_string(&problem).unwrap_or_else(|_| problem.detail.clone());
            query.reply_err(text).await
        }
    };
    if let Err(e) = sent {
        debug!(op, error = %e, "orchestrator rpc reply not delivered");
    }
}

async fn call(
    migrations: &Migrations,
    services: &Services,
    op: &str,
    payload: &[u8],
) -> Result<Vec<u8>, TaskError> {
    match op {
        "submit" => to_json(&migrations.submit(parse(op, payload)?).await?),
        "inspect" => to_json(&migrations.get(&parse::<TaskRef>(op, payload)?.id)?),
        "list" => to_json(&migrations.list()?),
        "cancel" => to_json(&migrations.cancel(&parse::<TaskRef>(op, payload)?.id)?),
        "deploy" => to_json(&services.deploy(parse(op, payload)?).await?),
        "services" => to_json(&services.list()?),
        "service" => to_json(
            &services
                .view(&parse::<ServiceRef>(op, payload)?.name)
                .await?,
        ),
        "remove" => {
            services
                .remove(&parse::<ServiceRef>(op, payload)?.name)
                .await?;
            to_json(&())
        }
        other => {
            warn!(op = other, "unknown orchestrator rpc");
            Err(TaskError::Invalid(format!(
                "unknown operation '{other}'; known: {}",
                OPS.join(", ")
            )))
        }
    }
}

fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, TaskError> {
    serde_json::to_vec(value)
        .map_err(|e| TaskError::Internal(format!("cannot encode the reply: {e}")))
}

fn parse<T: serde::de::DeserializeOwned>(op: &str, payload: &[u8]) -> Result<T, TaskError> {
    serde_json::from_slice(payload)
        .map_err(|e| TaskError::Invalid(format!("bad '{op}' payload: {e}")))
}
