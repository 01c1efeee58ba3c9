//! The sessions API: `POST /v1/sessions`, `GET /v1/sessions`, `GET` and `DELETE
//! /v1/sessions/{id}`, and `POST /v1/sessions/{id}/executions`.
//!
//! Every route needs a caller the gateway vouched for (a signed identity); a session exists only
//! for the identity that created it.

use crate::access_log::RequestId;
use crate::api::Failure;
use crate::capabilities::Mount;
use crate::limits::RequestedLimits;
use crate::runtimes::Language;
use crate::sandbox::Report;
use crate::server::{read_json, ready_sandbox, verified_caller, Service};
use crate::session::OpenError;
use crate::session_table::{Session, SessionRefusal, SessionView};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Instant;

/// `POST /v1/sessions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateSession {
    /// Only turn-based interpreters keep state: `python`.
    #[serde(default = "python")]
    language: Language,
}

fn python() -> Language {
    Language::Python
}

/// `POST /v1/sessions/{id}/executions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionExecution {
    /// Source text, run in the session's `__main__`.
    code: String,
    /// This execution's limits; the memory cap is the session's.
    #[serde(default)]
    limits: RequestedLimits,
}

/// A session execution's answer: the report, with the session's id and whether it has ended.
#[derive(Serialize)]
struct SessionExecutionResponse<'a> {
    request_id: &'a str,
    session_id: &'a str,
    /// True when the session ended with this execution (a trap: a timeout, the memory or
    /// output cap, the `/scratch` quota, a cancellation): the next request for it gets 404.
    session_ended: bool,
    #[serde(flatten)]
    report: &'a Report,
}

/// The sessions routes.
pub fn routes() -> Router<Arc<Service>> {
    Router::new()
        .route("/v1/sessions", post(create).get(list))
        .route("/v1/sessions/{id}", get(show).delete(delete))
        .route("/v1/sessions/{id}/executions", post(execute))
}

/// Answers `result`, counting a refusal under its code.
fn answer(service: &Service, request_id: &str, result: Result<Response, Failure>) -> Response {
    result.unwrap_or_else(|failure| {
        service.metrics().reject(failure.code);
        if failure.status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(request_id, message = %failure.message, "session request failed");
        }
        failure.for_request(request_id).into_response()
    })
}

fn not_found(id: &str) -> Failure {
    Failure::new(
        StatusCode::NOT_FOUND,
        "session_not_found",
        format!("no session {id} for this caller (it may have expired or ended)"),
    )
}

/// The caller's identity: sessions are owned, so an unsigned or anonymous caller has none.
fn owner(service: &Service, headers: &HeaderMap) -> Result<String, Failure> {
    verified_caller(service, headers)?.identity.ok_or_else(|| {
        Failure::new(
            StatusCode::FORBIDDEN,
            "identity_required",
            "sessions belong to a verified identity; call through the gateway with credentials",
        )
    })
}

fn session_json(session: &Session, service: &Service, request_id: &str) -> serde_json::Value {
    serde_json::json!({
        "request_id": request_id,
        "session": session.view(service.sessions().settings()),
    })
}

async fn create(
    State(service): State<Arc<Service>>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = create_session(&service, &headers, body, &request_id).await;
    answer(&service, &request_id, result)
}

async fn create_session(
    service: &Service,
    headers: &HeaderMap,
    body: Body,
    request_id: &str,
) -> Result<Response, Failure> {
    let sandbox = ready_sandbox(service)?;
    let owner = owner(service, headers)?;
    let request: CreateSession = read_json(body, service.max_request_bytes(), true).await?;
    if !sandbox.turn_based(request.language) {
        return Err(Failure::new(
            StatusCode::BAD_REQUEST,
            "sessions_unsupported",
            OpenError::Unsupported(request.language.as_str()).to_string(),
        ));
    }
    let scratch = tempfile::Builder::new()
        .prefix("sandbox-session-")
        .tempdir()
        .map_err(|e| internal(format!("cannot create scratch: {e}")))?;
    let mount = Mount {
        host: scratch.path().to_owned(),
        guest: "/scratch".into(),
        writable: true,
    };
    let (session, mut claimed) = service
        .sessions()
        .create(&owner, request.language, scratch)
        .map_err(|refusal| {
            let code = match refusal {
                SessionRefusal::PerIdentity(_) => "too_many_sessions",
                SessionRefusal::Total(_) => "sessions_full",
            };
            Failure::new(StatusCode::TOO_MANY_REQUESTS, code, refusal.to_string())
        })?;
    let mut limits = sandbox
        .limit_settings()
        .resolve(&RequestedLimits::default())
        .map_err(|e| internal(e.to_string()))?;
    limits.memory_bytes = service.sessions().settings().memory_bytes;
    let opened = async {
        let _slot = service.admission().admit().await?;
        sandbox
            .open_session(request.language, mount, limits)
            .await
            .map_err(|error| match error {
                OpenError::Unsupported(_) => Failure::new(
                    StatusCode::BAD_REQUEST,
                    "sessions_unsupported",
                    error.to_string(),
                ),
                OpenError::Execution(error) => error.into(),
            })
    }
    .await;
    match opened {
        Ok(live) => {
            session.started(live.memory_bytes());
            *claimed = Some(live);
        }
        Err(failure) => {
            retire(service.sessions().remove(&session.id, &owner));
            return Err(failure);
        }
    }
    drop(claimed);
    tracing::info!(
        request_id,
        identity = owner,
        session = session.id,
        "session created"
    );
    let location = format!("/v1/sessions/{}", session.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(session_json(&session, service, request_id)),
    )
        .into_response())
}

async fn list(
    State(service): State<Arc<Service>>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    headers: HeaderMap,
) -> Response {
    let result = owner(&service, &headers).map(|owner| {
        let settings = service.sessions().settings();
        let sessions: Vec<SessionView> = service
            .sessions()
            .list(&owner)
            .iter()
            .map(|s| s.view(settings))
            .collect();
        Json(serde_json::json!({"request_id": request_id, "sessions": sessions})).into_response()
    });
    answer(&service, &request_id, result)
}

async fn show(
    State(service): State<Arc<Service>>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let result = owner(&service, &headers).and_then(|owner| {
        let session = service
            .sessions()
            .get(&id, &owner)
            .ok_or_else(|| not_found(&id))?;
        Ok(Json(session_json(&session, &service, &request_id)).into_response())
    });
    answer(&service, &request_id, result)
}

async fn delete(
    State(service): State<Arc<Service>>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let result = owner(&service, &headers).and_then(|owner| {
        let Some(removed) = service.sessions().remove(&id, &owner) else {
            return Err(not_found(&id));
        };
        retire(Some(removed));
        tracing::info!(
            request_id,
            identity = owner,
            session = id,
            "session deleted"
        );
        Ok(StatusCode::NO_CONTENT.into_response())
    });
    answer(&service, &request_id, result)
}

async fn execute(
    State(service): State<Arc<Service>>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = execute_in_session(&service, &id, &headers, body, &request_id).await;
    answer(&service, &request_id, result)
}

async fn execute_in_session(
    service: &Service,
    id: &str,
    headers: &HeaderMap,
    body: Body,
    request_id: &str,
) -> Result<Response, Failure> {
    let sandbox = ready_sandbox(service)?;
    let owner = owner(service, headers)?;
    let session = service
        .sessions()
        .get(id, &owner)
        .ok_or_else(|| not_found(id))?;
    let request: SessionExecution = read_json(body, service.max_request_bytes(), false).await?;
    let settings = sandbox.limit_settings();
    if request.code.len() > settings.max_code_bytes {
        return Err(Failure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "code_too_large",
            format!(
                "code is {} bytes; the server accepts at most {}",
                request.code.len(),
                settings.max_code_bytes
            ),
        ));
    }
    if request.limits.memory_bytes.is_some() {
        return Err(Failure::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "limits.memory_bytes: a session's memory cap is set by the service (sessions.memory_bytes)",
        ));
    }
    let mut limits = settings.resolve(&request.limits).map_err(|e| {
        Failure::new(
            StatusCode::BAD_REQUEST,
            "limit_exceeds_maximum",
            e.to_string(),
        )
    })?;
    limits.memory_bytes = service.sessions().settings().memory_bytes;
    let mut claimed = session.try_claim().ok_or_else(|| {
        Failure::new(
            StatusCode::CONFLICT,
            "session_busy",
            "another execution is running in this session; send the next one when it ends",
        )
    })?;
    // Admitted before the interpreter is taken out: a full queue leaves the session as it was.
    let slot = service.admission().admit().await?;
    // Taken out for the run: if this request is dropped meanwhile, the session stays ended.
    let Some(live) = claimed.take() else {
        return Err(not_found(id));
    };
    let started = Instant::now();
    let run = sandbox
        .execute_in_session(live, request.code.into_bytes(), limits, slot)
        .await?;
    let ended = run.session.is_none();
    if let Some(live) = run.session {
        session.used(live.memory_bytes());
        *claimed = Some(live);
    } else {
        drop(claimed);
        retire(service.sessions().remove(id, &owner));
    }
    service.metrics().record(session.language, &run.report);
    tracing::info!(
        request_id,
        identity = owner,
        session = id,
        outcome = run.report.outcome.as_str(),
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        session_ended = ended,
        "session execution"
    );
    Ok(Json(SessionExecutionResponse {
        request_id,
        session_id: id,
        session_ended: ended,
        report: &run.report,
    })
    .into_response())
}

/// Drops removed sessions off the async workers: the last reference tears an instance down
/// (unmapping up to its memory cap) and deletes its `/scratch`.
pub(crate) fn retire<T: Send + 'static>(removed: T) {
    tokio::task::spawn_blocking(move || drop(removed));
}

fn internal(message: String) -> Failure {
    Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
}
