//! The web service (`/livez`, `/readyz`, `POST /jobs`, `GET /jobs/{id}`) and `/metrics`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use orchestrator_contract as contract;
use serde::Deserialize;
use serde_json::json;

use crate::state::Shared;

/// Body of `POST /jobs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewJob {
    /// `noop`, `sleep` or `fail`.
    pub(crate) kind: String,
    /// Parameters of the kind (`{"ms": 50}` for sleep).
    #[serde(default = "empty_object")]
    pub(crate) payload: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    json!({})
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(json!({"error": message.to_string()}))).into_response()
}

async fn livez() -> &'static str {
    "ok"
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    match shared.readiness().await {
        Ok(()) => "ok".into_response(),
        Err(reason) => error(StatusCode::SERVICE_UNAVAILABLE, reason),
    }
}

async fn submit(
    State(shared): State<Arc<Shared>>,
    body: Result<Json<NewJob>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(job) = match body {
        Ok(job) => job,
        Err(rejection) => return error(StatusCode::BAD_REQUEST, rejection.body_text()),
    };
    if let Err(e) = contract::validate_job(&job.kind, &job.payload) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    // Within the pool's time limit: a database that does not answer is a 503, and the
    // connection is discarded.
    let submitted = shared
        .db
        .run(async |c| contract::submit_job(&*c, &job.kind, &job.payload).await)
        .await;
    match submitted {
        Ok(id) => (StatusCode::CREATED, Json(json!({"id": id}))).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")),
    }
}

async fn show(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        return error(StatusCode::BAD_REQUEST, format!("job id {id:?} is not a number"));
    };
    match shared.db.run(async |c| contract::get_job(&*c, id).await).await {
        Ok(Some(job)) => Json(job).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no job {id}")),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")),
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.metrics.encode(),
    )
        .into_response()
}

/// Routes of the web service.
pub(crate) fn api(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/jobs", post(submit))
        .route("/jobs/{id}", get(show))
        .with_state(shared)
}

/// Routes of the metrics port.
pub(crate) fn metrics_router(shared: Arc<Shared>) -> Router {
    Router::new().route("/metrics", get(metrics)).with_state(shared)
}
