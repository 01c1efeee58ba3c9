//! The HTTP service: `POST /v1/executions`, `GET /v1/runtimes`, the sessions API
//! ([`crate::session_api`]), `/healthz`, `/readyz`, `/metrics`.

use crate::access_log::{self, RequestId, SpanAttributes};
use crate::admission::Admission;
use crate::api::{ApiError, ExecutionRequest, Failure};
use crate::capabilities::{grant, ApprovalKey, Caller, Mount};
use crate::config::{Settings, UnsignedCallers};
use crate::limits::{LimitSettings, Limits};
use crate::metrics::Metrics;
use crate::runtimes::Language;
use crate::sandbox::{Program, Report, Sandbox};
use crate::session_api;
use crate::session_table::SessionTable;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::Engine as _;
use gateway_identity::{SignatureError, SigningKey};
use request_tracing::{KeyValue, TraceExport};
use serde::Serialize;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::net::TcpListener;

/// The service's shared state.
pub struct Service {
    settings: Settings,
    /// The key gateway signatures are checked with; `None` trusts no caller.
    gateway_key: Option<SigningKey>,
    /// The key approvals are checked with; `None` grants nothing destructive.
    approval_key: Option<ApprovalKey>,
    sandbox: OnceLock<Arc<Sandbox>>,
    admission: Admission,
    metrics: Metrics,
    sessions: SessionTable,
    draining: AtomicBool,
    /// Whether requests' spans are exported (OpenTelemetry).
    trace_export: Arc<TraceExport>,
}

/// `POST /v1/executions`'s answer: the report, with the request id and language.
#[derive(Serialize)]
struct ExecutionResponse<'a> {
    request_id: &'a str,
    language: Language,
    #[serde(flatten)]
    report: &'a Report,
}

impl Service {
    /// A service that is not ready until [`Service::load`] has built its sandbox; `tracing`
    /// says whether requests' spans are exported.
    pub fn new(settings: Settings, trace_export: Arc<TraceExport>) -> Arc<Self> {
        let gateway_key = gateway_key(&settings);
        let approval_key = settings
            .approval_key_env
            .as_ref()
            .and_then(|name| ApprovalKey::new(std::env::var(name).unwrap_or_default()));
        Arc::new(Self {
            gateway_key,
            approval_key,
            admission: Admission::new(&settings.concurrency),
            sessions: SessionTable::new(settings.sessions.clone()),
            settings,
            sandbox: OnceLock::new(),
            metrics: Metrics::new(),
            draining: AtomicBool::new(false),
            trace_export,
        })
    }

    /// Builds the sandbox (compiling interpreters: slow on a cold cache) on a blocking thread.
    pub async fn load(self: &Arc<Self>) -> anyhow::Result<()> {
        let service = self.clone();
        let sandbox =
            tokio::task::spawn_blocking(move || Sandbox::new(&service.settings)).await??;
        let sandbox = Arc::new(sandbox);
        sandbox.start_prestarting()?;
        let _ = self.sandbox.set(sandbox);
        self.expire_sessions();
        Ok(())
    }

    /// Deletes expired and ended sessions every second, for as long as the service lives.
    fn expire_sessions(self: &Arc<Self>) {
        let service = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                every.tick().await;
                let Some(service) = service.upgrade() else {
                    return;
                };
                let expired = service.sessions.expire(std::time::Instant::now());
                if !expired.is_empty() {
                    tracing::info!(expired = expired.len(), "sessions expired");
                    session_api::retire(expired);
                }
            }
        });
    }

    /// The service's metrics.
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The live sessions.
    pub(crate) fn sessions(&self) -> &SessionTable {
        &self.sessions
    }

    /// The admission queue executions wait in.
    pub(crate) fn admission(&self) -> &Admission {
        &self.admission
    }

    /// The largest request body accepted.
    pub(crate) fn max_request_bytes(&self) -> usize {
        self.settings.max_request_bytes
    }

    /// The router over this service.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/v1/executions", post(execute))
            .route("/v1/runtimes", get(runtimes))
            .merge(session_api::routes())
            .route(
                "/healthz",
                get(|| async { Json(serde_json::json!({"status": "ok"})) }),
            )
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .fallback(not_found)
            .layer(axum::middleware::from_fn_with_state(
                self.trace_export.clone(),
                access_log::observe,
            ))
            .with_state(self.clone())
    }

    /// Serves on `listener` until `shutdown` resolves, then stops accepting, fails `/readyz`, and
    /// lets in-flight executions finish.
    pub async fn serve(
        self: &Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let service = self.clone();
        axum::serve(listener, self.router())
            .with_graceful_shutdown(async move {
                shutdown.await;
                service.draining.store(true, Ordering::Release);
                tracing::info!("draining: finishing in-flight executions");
            })
            .await
    }
}

async fn execute(
    State(service): State<Arc<Service>>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match run_execution(&service, &headers, body, &request_id).await {
        Ok(response) => response,
        Err(error) => {
            service.metrics.reject(error.code);
            error.into_response()
        }
    }
}

async fn run_execution(
    service: &Service,
    headers: &HeaderMap,
    body: Body,
    request_id: &str,
) -> Result<Response, ApiError> {
    execute_request(service, headers, body, request_id)
        .await
        .map_err(|failure| {
            if failure.status == StatusCode::INTERNAL_SERVER_ERROR {
                tracing::error!(request_id, message = %failure.message, "execution failed to start");
            }
            failure.for_request(request_id)
        })
}

/// Reads, checks and authorises an execution request, waits for a slot and runs it.
async fn execute_request(
    service: &Service,
    headers: &HeaderMap,
    body: Body,
    request_id: &str,
) -> Result<Response, Failure> {
    let sandbox = ready_sandbox(service)?;
    let (request, code, limits) = read_execution(
        body,
        service.settings.max_request_bytes,
        sandbox.limit_settings(),
    )
    .await?;
    let caller = verified_caller(service, headers)?;
    let mut mounts = grant(
        &request.capabilities,
        &caller,
        &service.settings.datasets,
        service.approval_key.as_ref(),
        &code,
        unix_now(),
    )?;
    // Held until the execution ends; dropping it deletes the directory and all it holds.
    let scratch = if request.capabilities.scratch {
        let dir = tempfile::Builder::new()
            .prefix("sandbox-scratch-")
            .tempdir()
            .map_err(|e| {
                Failure::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    format!("cannot create scratch: {e}"),
                )
            })?;
        mounts.push(Mount {
            host: dir.path().to_owned(),
            guest: "/scratch".into(),
            writable: true,
        });
        Some(dir)
    } else {
        None
    };

    let slot = service.admission.admit().await?;
    let language = request.language;
    let program = Program {
        language,
        code,
        stdin: request.stdin.into_bytes(),
        args: request.args,
    };
    // The guest holds its slot and scratch directory until it has stopped, even if this
    // request is dropped first (which cancels it).
    let report = sandbox
        .execute(program, limits, mounts, (slot, scratch))
        .await?;
    service.metrics.record(language, &report);
    tracing::info!(
        request_id,
        identity = caller.identity.as_deref().unwrap_or("-"),
        language = language.as_str(),
        outcome = report.outcome.as_str(),
        duration_ms = report.duration_ms,
        fuel_used = report.fuel_used,
        "execution"
    );
    let body = ExecutionResponse {
        request_id,
        language,
        report: &report,
    };
    let mut response = (
        [(
            header::HeaderName::from_static(gateway_contract::headers::REQUEST_ID),
            request_id.to_string(),
        )],
        Json(body),
    )
        .into_response();
    response.extensions_mut().insert(SpanAttributes(vec![
        KeyValue::new("sandbox.language", language.as_str()),
        KeyValue::new("sandbox.outcome", report.outcome.as_str()),
        KeyValue::new("sandbox.duration_ms", report.duration_ms),
        KeyValue::new("sandbox.fuel_used", report.fuel_used as i64),
    ]));
    Ok(response)
}

async fn runtimes(
    State(service): State<Arc<Service>>,
    Extension(RequestId(request_id)): Extension<RequestId>,
) -> Response {
    let sandbox = match ready_sandbox(&service) {
        Ok(sandbox) => sandbox,
        Err(failure) => return failure.for_request(&request_id).into_response(),
    };
    let limits = sandbox.limit_settings();
    Json(serde_json::json!({
        "runtimes": sandbox.runtimes(),
        "limits": {
            "default": {
                "timeout_ms": limits.timeout_ms.default, "fuel": limits.fuel.default,
                "memory_bytes": limits.memory_bytes.default, "stdout_bytes": limits.stdout_bytes.default,
                "stderr_bytes": limits.stderr_bytes.default,
            },
            "max": {
                "timeout_ms": limits.timeout_ms.max, "fuel": limits.fuel.max,
                "memory_bytes": limits.memory_bytes.max, "stdout_bytes": limits.stdout_bytes.max,
                "stderr_bytes": limits.stderr_bytes.max, "code_bytes": limits.max_code_bytes,
            },
        },
        "concurrency": {
            "max_running": service.settings.concurrency.max_running,
            "max_queued": service.settings.concurrency.max_queued,
        },
    }))
    .into_response()
}

async fn readyz(State(service): State<Arc<Service>>) -> Response {
    let (status, state) = if service.draining.load(Ordering::Acquire) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else if service.sandbox.get().is_none() {
        (StatusCode::SERVICE_UNAVAILABLE, "loading")
    } else {
        (StatusCode::OK, "ready")
    };
    (status, Json(serde_json::json!({"status": state}))).into_response()
}

async fn metrics(State(service): State<Arc<Service>>) -> Response {
    let text = service
        .metrics
        .render(service.admission.running(), service.admission.waiting());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn not_found(Extension(RequestId(request_id)): Extension<RequestId>) -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint",
        &request_id,
    )
    .into_response()
}

/// The caller: who the gateway vouched for, or (when the configuration allows unsigned callers)
/// an anonymous one with no scopes; otherwise 401 `untrusted_caller`.
pub(crate) fn verified_caller(service: &Service, headers: &HeaderMap) -> Result<Caller, Failure> {
    match authenticated_caller(service, headers) {
        Ok(caller) => Ok(caller),
        Err(_) if service.settings.gateway.unsigned_callers == UnsignedCallers::ComputeOnly => {
            Ok(Caller::default())
        }
        Err(error) => Err(Failure::new(
            StatusCode::UNAUTHORIZED,
            "untrusted_caller",
            format!("{error}; only the gateway may call this service"),
        )),
    }
}

/// A JSON request body of at most `max_request` bytes; an empty one is `{}` when `empty_ok`.
pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
    body: Body,
    max_request: usize,
    empty_ok: bool,
) -> Result<T, Failure> {
    let bytes = axum::body::to_bytes(body, max_request).await.map_err(|_| {
        Failure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            format!("the request body exceeds {max_request} bytes"),
        )
    })?;
    let bytes: &[u8] = if empty_ok && bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &bytes
    };
    serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(bytes))
        .map_err(|e| invalid_request(format!("{}: {}", e.path(), e.inner())))
}

/// The request body as an execution: its code decoded and within the size cap, its limits
/// resolved against the server's.
async fn read_execution(
    body: Body,
    max_request: usize,
    settings: &LimitSettings,
) -> Result<(ExecutionRequest, Vec<u8>, Limits), Failure> {
    let mut request: ExecutionRequest = read_json(body, max_request, false).await?;
    let code = match request.language {
        Language::Wasm => base64::engine::general_purpose::STANDARD
            .decode(request.code.trim())
            .map_err(|e| invalid_request(format!("code: not base64 ({e})")))?,
        _ => std::mem::take(&mut request.code).into_bytes(),
    };
    let max_code = settings.max_code_bytes;
    if code.len() > max_code {
        return Err(Failure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "code_too_large",
            format!(
                "code is {} bytes; the server accepts at most {max_code}",
                code.len()
            ),
        ));
    }
    let limits = settings.resolve(&request.limits).map_err(|e| {
        Failure::new(
            StatusCode::BAD_REQUEST,
            "limit_exceeds_maximum",
            e.to_string(),
        )
    })?;
    Ok((request, code, limits))
}

/// The sandbox, once its runtimes have loaded; until then 503 `not_ready`.
pub(crate) fn ready_sandbox(service: &Service) -> Result<&Arc<Sandbox>, Failure> {
    service.sandbox.get().ok_or_else(|| {
        Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "runtimes are still loading",
        )
    })
}

/// A 400 `invalid_request` saying what is wrong.
fn invalid_request(message: String) -> Failure {
    Failure::new(StatusCode::BAD_REQUEST, "invalid_request", message)
}

/// The caller the gateway vouches for: identity, scopes and approval count only when the
/// request carries a valid, fresh gateway signature over them.
fn authenticated_caller(service: &Service, headers: &HeaderMap) -> Result<Caller, SignatureError> {
    let key = service
        .gateway_key
        .as_ref()
        .ok_or(SignatureError::Malformed)?;
    let max_age = service.settings.gateway.max_signature_age_seconds;
    let claims = key.verify_headers(headers, max_age)?;
    // Signed as sent; names and scopes that are not UTF-8 are none this service knows.
    let text = |bytes| std::str::from_utf8(bytes).map_err(|_| SignatureError::Malformed);
    let (identity, scopes) = (text(claims.identity)?, text(claims.scopes)?);
    Ok(Caller {
        identity: Some(identity.to_string()).filter(|i| !i.is_empty()),
        scopes: scopes.split_whitespace().map(str::to_string).collect(),
        approval_token: headers
            .get("x-sandbox-approval")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    })
}

/// Unix seconds, the clock approvals expire on.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The gateway key named by `gateway.signing_key_env`, if it is set and usable.
fn gateway_key(settings: &Settings) -> Option<SigningKey> {
    let Some(name) = &settings.gateway.signing_key_env else {
        tracing::warn!("gateway.signing_key_env is not set: no caller is trusted with scopes");
        return None;
    };
    let value = std::env::var(name).unwrap_or_default();
    match SigningKey::new(value) {
        Ok(key) => Some(key),
        Err(error) => {
            tracing::warn!(variable = name, %error, "no usable gateway key: no caller is trusted with scopes");
            None
        }
    }
}
