//! The OpenAPI 3 document of the HTTP API (`GET /openapi.json`), built in code so it ships
//! with the binary and nothing is downloaded at build time. Enum values are taken from the
//! Rust types, so a renamed variant changes the document with it.

use mose_protocol::messages::Phase;
use mose_protocol::model::{Objective, Strategy};
use mose_protocol::steps::{FailureKind, Op};
use serde::Serialize;
use serde_json::{json, Value};

use crate::services::ServiceStatus;
use crate::tasks::TaskStatus;
use mose_api::Reason;

/// The names serde gives `values` (unit variants serialise as strings).
fn names<T: Serialize>(values: &[T]) -> Vec<Value> {
    values
        .iter()
        .filter_map(|v| serde_json::to_value(v).ok())
        .collect()
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    })
}

fn json_response(description: &str, schema: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema}}})
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// The document.
pub fn document() -> Value {
    let task_id = json!({
        "name": "id", "in": "path", "required": true, "schema": {"type": "string"},
        "description": "task id as returned by POST /v1/migrations"
    });
    let agent_id =
        json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string"}});
    let service_name =
        json!({"name": "name", "in": "path", "required": true, "schema": {"type": "string"}});
    let reasons: Vec<Value> = Reason::ALL.iter().map(|r| json!(r.as_str())).collect();
    let phases: Vec<Value> = Phase::ALL.iter().map(|p| json!(p.as_str())).collect();
    let ops: Vec<Value> = Op::ALL.iter().map(|op| json!(op.as_str())).collect();
    let kinds: Vec<Value> = FailureKind::ALL.iter().map(|k| json!(k.as_str())).collect();
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "MOSE-RS orchestrator",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Agents on the edge LAN, the services deployed on them and live \
                            migration tasks (docs/protocol.md). Every error is an RFC 9457 \
                            problem document with a stable reason."
        },
        "paths": {
            "/healthz": {"get": {
                "summary": "Liveness and the number of agents present",
                "responses": {"200": json_response("up", json!({"type": "object"}))}
            }},
            "/v1/agents": {"get": {
                "summary": "Agents present, with profile and latest metrics",
                "responses": {"200": json_response("agents by id",
                    json!({"type": "array", "items": schema_ref("Agent")}))}
            }},
            "/v1/agents/{id}": {"get": {
                "summary": "One agent",
                "parameters": [agent_id],
                "responses": {
                    "200": json_response("the agent", schema_ref("Agent")),
                    "404": error_response("no such agent is present")
                }
            }},
            "/v1/services": {
                "post": {
                    "summary": "Deploy a service: address allocated, container started, mobiles steered",
                    "requestBody": {"required": true, "content": {"application/json": {
                        "schema": schema_ref("DeployRequest")}}},
                    "responses": {
                        "201": json_response("the running service", schema_ref("Service")),
                        "400": error_response("bad JSON or name, an agent in the wrong role"),
                        "409": error_response("name taken, address pool exhausted, image missing on the host"),
                        "422": error_response("unknown agent"),
                        "502": error_response("the host or a mobile failed the deployment (nothing is left)"),
                        "503": error_response("an agent has not finished probing")
                    }
                },
                "get": {
                    "summary": "Every service, by name",
                    "responses": {"200": json_response("services",
                        json!({"type": "array", "items": schema_ref("Service")}))}
                }
            },
            "/v1/services/{name}": {
                "get": {
                    "summary": "One service with its live state (state size, dirty rate, clients)",
                    "parameters": [service_name.clone()],
                    "responses": {
                        "200": json_response("the service", schema_ref("Service")),
                        "404": error_response("no such service")
                    }
                },
                "delete": {
                    "summary": "Remove a service from its mobiles and its host",
                    "parameters": [service_name],
                    "responses": {
                        "204": {"description": "removed; its address is free"},
                        "404": error_response("no such service"),
                        "409": error_response("it is migrating"),
                        "502": error_response("its host did not confirm (repeat the call)")
                    }
                }
            },
            "/v1/migrations": {
                "post": {
                    "summary": "Plan and start a migration",
                    "requestBody": {"required": true, "content": {"application/json": {
                        "schema": schema_ref("MigrationRequest")}}},
                    "responses": {
                        "201": json_response("accepted: the task with its plan (status queued)",
                            schema_ref("Task")),
                        "400": error_response("invalid request: bad JSON or id, source = destination, \
                            non-positive target, an agent in the wrong role"),
                        "409": error_response("the service is already being migrated"),
                        "422": error_response("unknown agent or service (the source's reason), \
                            or inputs the designer cannot plan with"),
                        "502": error_response("the source did not answer Describe"),
                        "503": error_response("an agent has joined but its profile is not known yet")
                    }
                },
                "get": {
                    "summary": "Every task, newest first",
                    "responses": {"200": json_response("tasks",
                        json!({"type": "array", "items": schema_ref("Task")}))}
                }
            },
            "/v1/migrations/{id}": {
                "get": {
                    "summary": "One task: phase, status, plan and predictions, events, measurements",
                    "parameters": [task_id.clone()],
                    "responses": {
                        "200": json_response("the task", schema_ref("Task")),
                        "404": error_response("no such task")
                    }
                },
                "delete": {
                    "summary": "Cancel: roll back to the source (before the point of no return)",
                    "parameters": [task_id],
                    "responses": {
                        "202": json_response("cancel requested; poll until status is cancelled",
                            schema_ref("Task")),
                        "404": error_response("no such task"),
                        "409": error_response("finished, or past the point of no return")
                    }
                }
            },
            "/openapi.json": {"get": {
                "summary": "This document",
                "responses": {"200": json_response("OpenAPI 3", json!({"type": "object"}))}
            }},
            "/metrics": {"get": {
                "summary": "Prometheus text exposition",
                "responses": {"200": {"description": "metrics",
                    "content": {"text/plain": {"schema": {"type": "string"}}}}}
            }}
        },
        "components": {"schemas": {
            "Problem": {
                "type": "object", "required": ["type", "title", "status", "detail", "reason"],
                "properties": {
                    "type": {"type": "string", "example": "about:blank"},
                    "title": {"type": "string"},
                    "status": {"type": "integer"},
                    "detail": {"type": "string"},
                    "reason": {"type": "string", "enum": reasons}
                }
            },
            "DeployRequest": {
                "type": "object",
                "additionalProperties": false,
                "required": ["name", "image", "host"],
                "properties": {
                    "name": {"type": "string"},
                    "image": {"type": "string", "description": "present on the host"},
                    "host": {"type": "string", "description": "edge agent"},
                    "args": {"type": "array", "items": {"type": "string"}},
                    "env": {"type": "object", "additionalProperties": {"type": "string"}},
                    "mobiles": {"type": "array", "items": {"type": "string"}, "nullable": true,
                                "description": "default: every mobile agent present"}
                }
            },
            "Service": {
                "type": "object",
                "required": ["name", "image", "host", "network", "status"],
                "properties": {
                    "name": {"type": "string"},
                    "image": {"type": "string"},
                    "host": {"type": "string"},
                    "args": {"type": "array", "items": {"type": "string"}},
                    "env": {"type": "object", "additionalProperties": {"type": "string"}},
                    "mobiles": {"type": "array", "items": {"type": "string"}},
                    "network": {"type": "object", "description": "ip, prefix_len, mac, clients"},
                    "status": {"type": "string", "enum": names(&[ServiceStatus::Deploying,
                        ServiceStatus::Running, ServiceStatus::Removing])},
                    "last_migration": {"type": "string", "nullable": true},
                    "migrating": {"type": "string", "nullable": true, "description": "GET one only"},
                    "state_bytes": {"type": "integer", "nullable": true, "description": "GET one only"},
                    "dirty_rate_bytes_per_s": {"type": "integer", "nullable": true},
                    "clients": {"type": "array", "items": {"type": "object"}},
                    "notes": {"type": "array", "items": {"type": "string"}}
                }
            },
            "Agent": {
                "type": "object",
                "description": "An agent's view: id, joined_us, profile (role, capabilities, pam), \
                                metrics, metrics_received_us (docs/protocol.md)",
                "required": ["id", "joined_us"],
                "properties": {
                    "id": {"type": "string"},
                    "joined_us": {"type": "integer"},
                    "profile": {"type": "object", "nullable": true},
                    "metrics": {"type": "object", "nullable": true},
                    "metrics_received_us": {"type": "integer", "nullable": true}
                }
            },
            "MigrationRequest": {
                "type": "object",
                "additionalProperties": false,
                "required": ["service", "destination", "target_downtime_ms", "target_duration_ms"],
                "properties": {
                    "service": {"type": "string", "description": "service (container) name"},
                    "destination": {"type": "string", "description": "edge agent it moves to"},
                    "source": {"type": "string", "nullable": true,
                               "description": "edge agent it runs on: checked for a deployed \
                                               service, needed for any other container"},
                    "mobiles": {"type": "array", "items": {"type": "string"}, "nullable": true,
                                "description": "mobile agents whose flows follow (default: the \
                                                service's)"},
                    "objective": {"type": "string", "enum": names(&[Objective::Downtime, Objective::Resources]),
                                  "default": "downtime"},
                    "target_downtime_ms": {"type": "number", "exclusiveMinimum": true, "minimum": 0},
                    "target_duration_ms": {"type": "number", "exclusiveMinimum": true, "minimum": 0},
                    "bandwidth_bytes_per_s": {"type": "integer", "minimum": 1, "nullable": true,
                        "description": "bandwidth source → destination in bytes/s, when known \
                                        (overrides the link estimate)"}
                }
            },
            "Plan": {
                "type": "object",
                "properties": {
                    "strategy": {"type": "string", "enum": names(&[Strategy::Cold, Strategy::Precopy,
                        Strategy::IterativePrecopy, Strategy::Ms2m, Strategy::HotStandby])},
                    "objective": {"type": "string", "enum": names(&[Objective::Downtime, Objective::Resources])},
                    "bandwidth_bytes_per_s": {"type": "integer", "description": "bytes per second"},
                    "rounds": {"type": "integer"},
                    "predicted_downtime_s": {"type": "number"},
                    "predicted_total_s": {"type": "number"},
                    "target_met": {"type": "boolean"},
                    "explanation": {"type": "string"}
                }
            },
            "Task": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "request": schema_ref("MigrationRequest"),
                    "route": {"type": "object", "description": "source, destination, mobiles"},
                    "spec": {"type": "object", "description": "the service as the source described it"},
                    "inputs": {"type": "object", "description": "M, R_max, L and fallback notes"},
                    "plan": schema_ref("Plan"),
                    "status": {"type": "string", "enum": names(&[TaskStatus::Queued, TaskStatus::Running,
                        TaskStatus::Succeeded, TaskStatus::Failed, TaskStatus::RolledBack,
                        TaskStatus::Cancelled])},
                    "phase": {"type": "string", "nullable": true, "enum": phases},
                    "progress": {"type": "object", "properties": {
                        "restored": {"type": "boolean"},
                        "switch_attempted": {"type": "boolean"},
                        "switched": {"type": "boolean"}}},
                    "events": {"type": "array", "items": {"type": "object", "properties": {
                        "task": {"type": "string"}, "agent": {"type": "string"},
                        "phase": {"type": "string"}, "status": {},
                        "at_us": {"type": "integer"}}}},
                    "faults": {"type": "array", "description": "every step failure, oldest first",
                        "items": {"type": "object", "properties": {
                        "agent": {"type": "string"}, "op": {"type": "string", "enum": ops},
                        "kind": {"type": "string", "enum": kinds}, "reason": {"type": "string"},
                        "at_us": {"type": "integer"}}}},
                    "error": {"type": "string", "nullable": true},
                    "measurements": {"type": "object", "properties": {
                        "phases_ms": {"type": "object", "additionalProperties": {"type": "number"}},
                        "frozen_ms": {"type": "number", "nullable": true},
                        "total_ms": {"type": "number", "nullable": true},
                        "image_bytes": {"type": "integer", "nullable": true},
                        "checkpoint_stats": {"type": "object", "nullable": true},
                        "restore_stats": {"type": "object", "nullable": true}}},
                    "created_us": {"type": "integer"},
                    "updated_us": {"type": "integer"},
                    "finished_us": {"type": "integer", "nullable": true}
                }
            }
        }}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_every_route_with_enums_from_the_types() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.0.3");
        for path in [
            "/healthz",
            "/v1/agents",
            "/v1/agents/{id}",
            "/v1/services",
            "/v1/services/{name}",
            "/v1/migrations",
            "/v1/migrations/{id}",
            "/openapi.json",
            "/metrics",
        ] {
            assert!(doc["paths"][path].is_object(), "{path} missing");
        }
        let status = &doc["components"]["schemas"]["Task"]["properties"]["status"]["enum"];
        assert!(status.as_array().unwrap().contains(&json!("rolled_back")));
        let strategy = &doc["components"]["schemas"]["Plan"]["properties"]["strategy"]["enum"];
        assert!(strategy
            .as_array()
            .unwrap()
            .contains(&json!("iterative_precopy")));
    }
}
