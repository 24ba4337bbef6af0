//! The `mose` CLI's side of the HTTP API: requests, error decoding and tables.

use std::fmt::Write as _;

use mose_protocol::messages::now_us;
use serde::de::DeserializeOwned;
use thiserror::Error;

use crate::registry::AgentView;

/// A failed API call.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot reach the orchestrator at {url}: {reason} (is mose-orchestrator running? see --api)")]
    Unreachable { url: String, reason: String },
    #[error("{url}: {status}: {message}")]
    Api {
        url: String,
        status: u16,
        message: String,
    },
    #[error("{url}: unexpected answer: {reason}")]
    Decode { url: String, reason: String },
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

    pub async fn agents(&self) -> Result<Vec<AgentView>, ClientError> {
        self.get("/v1/agents").await
    }

    pub async fn agent(&self, id: &str) -> Result<AgentView, ClientError> {
        self.get(&format!("/v1/agents/{id}")).await
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| ClientError::Unreachable {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| ClientError::Unreachable {
            url: url.clone(),
            reason: e.to_string(),
        })?;
        if !status.is_success() {
            // Our API answers {"error": "..."}; anything else is shown as text.
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            return Err(ClientError::Api {
                url,
                status: status.as_u16(),
                message,
            });
        }
        serde_json::from_slice(&body).map_err(|e| ClientError::Decode {
            url,
            reason: e.to_string(),
        })
    }
}

/// The agents as an aligned text table.
pub fn agents_table(agents: &[AgentView]) -> String {
    let mut rows = vec![[
        "ID", "ROLE", "HOST", "CPU%", "MEM USED", "LOAD1", "CONTAINERS", "CRIU", "DIRTY-TRACK", "METRICS AGE",
    ]
    .map(String::from)];
    let now = now_us();
    for a in agents {
        let p = a.profile.as_ref();
        let m = a.metrics.as_ref();
        let dash = || "-".to_string();
        rows.push([
            a.id.clone(),
            p.map_or_else(dash, |p| p.role.to_string()),
            p.map_or_else(dash, |p| p.hostname.clone()),
            m.map_or_else(dash, |m| format!("{:.0}", m.host.cpu_percent)),
            m.map_or_else(dash, |m| {
                format!("{} / {}", mib(m.host.mem_used_bytes), mib(m.host.mem_total_bytes))
            }),
            m.map_or_else(dash, |m| format!("{:.2}", m.host.load_avg[0])),
            m.map_or_else(dash, |m| m.containers.len().to_string()),
            p.and_then(|p| p.capabilities.criu_version.clone()).unwrap_or_else(dash),
            p.map_or_else(dash, |p| yes_no(p.capabilities.dirty_tracking)),
            a.metrics_received_us.map_or_else(dash, |t| {
                format!("{:.1}s", now.saturating_sub(t) as f64 / 1e6)
            }),
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes / (1 << 20))
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_a_row_per_agent_even_without_profile() {
        let agents = vec![AgentView {
            id: "edge1".into(),
            joined_us: 0,
            profile: None,
            metrics: None,
            metrics_received_us: None,
        }];
        let table = agents_table(&agents);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("ID"));
        assert!(lines[1].starts_with("edge1"));
    }
}
