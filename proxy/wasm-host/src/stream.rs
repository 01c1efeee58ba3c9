//! [`HttpStream`]: one request through one filter, driven phase by phase by the proxy.

use crate::abi::Action;
use crate::bounds::MAX_BODY_BYTES;
use crate::headers::Headers;
use crate::plugin::Plugin;
use crate::types::{FailurePolicy, LocalResponse, StreamInfo, Verdict};
use crate::vm::{Phase, SharedVm};
use std::sync::atomic::Ordering;
use tokio::time::Instant;

/// One HTTP context of one filter. Call the phases in order, then [`HttpStream::finish`].
pub struct HttpStream {
    pub(crate) plugin: Plugin,
    /// The stream's facts until its context is created (by the first phase).
    pub(crate) pending: Option<StreamInfo>,
    /// `None` before the first phase, or when no VM could run the stream (the failure policy
    /// applies to every phase).
    pub(crate) vm: Option<SharedVm>,
    pub(crate) id: u32,
    /// Set when the filter failed open: later phases skip it.
    pub(crate) bypass: bool,
    pub(crate) request_id: Option<String>,
}

impl HttpStream {
    /// Request headers (with `:method`, `:path`, `:authority`, `:scheme`).
    pub async fn on_request_headers(
        &mut self,
        headers: &mut Headers,
        end_of_stream: bool,
    ) -> Verdict {
        self.request_id = headers.get_str("x-request-id");
        self.run_headers(Phase::RequestHeaders, headers, end_of_stream)
            .await
    }

    /// A chunk of request body. On `Continue`, `chunk` holds the data to forward (everything
    /// buffered so far); on `Buffer` it is empty and the data is kept.
    pub async fn on_request_body(&mut self, chunk: &mut Vec<u8>, end_of_stream: bool) -> Verdict {
        self.run_body(Phase::RequestBody, chunk, end_of_stream)
            .await
    }

    /// Request trailers.
    pub async fn on_request_trailers(&mut self, trailers: &mut Headers) -> Verdict {
        self.run_headers(Phase::RequestTrailers, trailers, true)
            .await
    }

    /// Response headers (with `:status`).
    pub async fn on_response_headers(
        &mut self,
        headers: &mut Headers,
        end_of_stream: bool,
    ) -> Verdict {
        self.run_headers(Phase::ResponseHeaders, headers, end_of_stream)
            .await
    }

    /// A chunk of response body; see [`HttpStream::on_request_body`].
    pub async fn on_response_body(&mut self, chunk: &mut Vec<u8>, end_of_stream: bool) -> Verdict {
        self.run_body(Phase::ResponseBody, chunk, end_of_stream)
            .await
    }

    /// Response trailers.
    pub async fn on_response_trailers(&mut self, trailers: &mut Headers) -> Verdict {
        self.run_headers(Phase::ResponseTrailers, trailers, true)
            .await
    }

    /// Ends the stream: the filter's `on_done`, `on_log` and `on_delete` run.
    pub async fn finish(mut self) {
        if let Some(cell) = self.vm.take() {
            cell.lock().await.finish_stream(self.id).await;
        }
    }

    async fn run_headers(
        &mut self,
        phase: Phase,
        headers: &mut Headers,
        end_of_stream: bool,
    ) -> Verdict {
        let Some(cell) = self.active_vm().await else {
            return self.failure_verdict();
        };
        let action = {
            let mut vm = cell.lock().await;
            let Some(stream) = vm.stream(self.id) else {
                return self.failure_verdict();
            };
            let count = headers.len();
            *slot(stream, phase) = std::mem::take(headers);
            reset_resume(stream, phase);
            vm.call_phase(self.id, phase, count, end_of_stream).await
        };
        let verdict = self.settle(&cell, phase, action).await;
        // Copied after settling: a paused filter may still edit the headers (from a callout).
        if let Some(stream) = cell.lock().await.stream(self.id) {
            *headers = slot(stream, phase).clone();
        }
        verdict
    }

    async fn run_body(
        &mut self,
        phase: Phase,
        chunk: &mut Vec<u8>,
        end_of_stream: bool,
    ) -> Verdict {
        let Some(cell) = self.active_vm().await else {
            return self.failure_verdict();
        };
        let action = {
            let mut vm = cell.lock().await;
            let Some(stream) = vm.stream(self.id) else {
                return self.failure_verdict();
            };
            let body = body(stream, phase);
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                // The filter holds more than the host keeps for it: the request is refused (a
                // response's headers are already out, so it can only be reset).
                drop(vm);
                return self.body_too_large(phase);
            }
            body.append(chunk);
            let size = body.len();
            reset_resume(stream, phase);
            let action = vm.call_phase(self.id, phase, size, end_of_stream).await;
            // A pause before the end of the body buffers, unless the filter answered or reset.
            let answered = vm
                .stream(self.id)
                .is_none_or(|s| s.local_response.is_some() || s.close || s.shared_data_unavailable);
            if matches!(action, Ok(Action::Pause)) && !end_of_stream && !answered {
                return Verdict::Buffer;
            }
            action
        };
        let verdict = self.settle(&cell, phase, action).await;
        if verdict == Verdict::Continue {
            let mut vm = cell.lock().await;
            if let Some(stream) = vm.stream(self.id) {
                *chunk = std::mem::take(body(stream, phase));
            }
        }
        verdict
    }

    /// Turns a callback's result into a verdict, waiting while the filter holds the stream paused.
    async fn settle(
        &mut self,
        cell: &SharedVm,
        phase: Phase,
        action: Result<Action, crate::vm::Trapped>,
    ) -> Verdict {
        let Ok(action) = action else {
            return self.failure_verdict();
        };
        let deadline = Instant::now() + self.plugin.inner.shared.spec.limits.pause_timeout;
        let mut paused = action == Action::Pause;
        loop {
            let wake = {
                let mut vm = cell.lock().await;
                if cell.broken.load(Ordering::Acquire) {
                    drop(vm);
                    return self.failure_verdict();
                }
                let Some(stream) = vm.stream(self.id) else {
                    return self.failure_verdict();
                };
                if stream.shared_data_unavailable {
                    return Verdict::Respond(self.error_response(
                        "shared_data_unavailable",
                        "the gateway's shared state is unavailable",
                    ));
                }
                if let Some(response) = stream.local_response.take() {
                    return Verdict::Respond(response);
                }
                if stream.close {
                    return Verdict::Reset;
                }
                if !paused || take_resume(stream, phase) {
                    return Verdict::Continue;
                }
                stream.wake.clone()
            };
            if tokio::time::timeout_at(deadline, wake.notified())
                .await
                .is_err()
            {
                let plugin = &self.plugin.inner.shared.spec.name;
                tracing::warn!(
                    plugin,
                    ?phase,
                    "filter kept the stream paused past the pause timeout"
                );
                return self.policy_verdict(
                    "filter_timeout",
                    "the filter did not resume the request in time",
                );
            }
            paused = true;
        }
    }

    /// The stream's VM while it can run the filter, creating the context on the first phase.
    async fn active_vm(&mut self) -> Option<SharedVm> {
        if self.bypass {
            return None;
        }
        if let Some(info) = self.pending.take() {
            if let Some((cell, id)) = self.plugin.create_context(info).await {
                self.vm = Some(cell);
                self.id = id;
            }
        }
        self.vm
            .clone()
            .filter(|cell| !cell.broken.load(Ordering::Acquire))
    }

    /// The verdict for a stream whose filter failed (or whose VM is broken or missing).
    fn failure_verdict(&mut self) -> Verdict {
        if self.bypass {
            return Verdict::Continue;
        }
        self.policy_verdict("filter_failed", "a gateway filter failed")
    }

    fn policy_verdict(&mut self, code: &str, message: &str) -> Verdict {
        match self.plugin.inner.shared.spec.failure_policy {
            FailurePolicy::FailOpen => {
                self.bypass = true;
                Verdict::Continue
            }
            FailurePolicy::FailClosed => Verdict::Respond(self.error_response(code, message)),
        }
    }

    /// A 503 JSON error in the gateway's shape, naming this filter in the access log.
    fn error_response(&self, code: &str, message: &str) -> LocalResponse {
        self.error_with_status(503, code, message)
    }

    fn error_with_status(&self, status: u16, code: &str, message: &str) -> LocalResponse {
        LocalResponse {
            status,
            headers: Headers::from_pairs([("content-type", "application/json")]),
            body: gateway_contract::error_body(status, code, message, self.request_id.as_deref()),
            details: format!("{code}: {}", self.plugin.inner.shared.spec.name),
            grpc_status: None,
        }
    }

    /// The verdict for a body that outgrew [`MAX_BODY_BYTES`] while the filter buffered it.
    fn body_too_large(&self, phase: Phase) -> Verdict {
        if is_response(phase) {
            return Verdict::Reset;
        }
        Verdict::Respond(self.error_with_status(
            413,
            "filter_buffer_exceeded",
            "the request body is larger than a filter may buffer",
        ))
    }
}

impl Drop for HttpStream {
    fn drop(&mut self) {
        // A stream dropped without `finish` (client gone, proxy error) still ends its context.
        if let Some(cell) = self.vm.take() {
            let id = self.id;
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move { cell.lock().await.finish_stream(id).await });
            }
        }
    }
}

fn slot(stream: &mut crate::state::StreamState, phase: Phase) -> &mut Headers {
    match phase {
        Phase::RequestHeaders | Phase::RequestBody => &mut stream.request_headers,
        Phase::RequestTrailers => &mut stream.request_trailers,
        Phase::ResponseHeaders | Phase::ResponseBody => &mut stream.response_headers,
        Phase::ResponseTrailers => &mut stream.response_trailers,
    }
}

fn body(stream: &mut crate::state::StreamState, phase: Phase) -> &mut Vec<u8> {
    match phase {
        Phase::RequestHeaders | Phase::RequestBody | Phase::RequestTrailers => {
            &mut stream.request_body
        }
        _ => &mut stream.response_body,
    }
}

fn is_response(phase: Phase) -> bool {
    matches!(
        phase,
        Phase::ResponseHeaders | Phase::ResponseBody | Phase::ResponseTrailers
    )
}

fn reset_resume(stream: &mut crate::state::StreamState, phase: Phase) {
    if is_response(phase) {
        stream.resume_response = false;
    } else {
        stream.resume_request = false;
    }
}

fn take_resume(stream: &mut crate::state::StreamState, phase: Phase) -> bool {
    let flag = if is_response(phase) {
        &mut stream.resume_response
    } else {
        &mut stream.resume_request
    };
    std::mem::take(flag)
}
