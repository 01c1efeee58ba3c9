//! Exercises the host's ABI areas; the plugin configuration (a mode name) picks the behaviour.
//! Results are made observable through headers, bodies, shared data, metrics and logs (mode
//! `root-log`: the root context only logs its start, configuration and ticks).

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType, Status};
use std::time::Duration;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(ProbeRoot::default()) });
}}

#[derive(Default)]
struct ProbeRoot {
    mode: String,
    queue: Option<u32>,
    requests_metric: u32,
    sizes_metric: u32,
}

impl Context for ProbeRoot {}

impl RootContext for ProbeRoot {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        log::info!("probe: vm started");
        true
    }

    fn on_configure(&mut self, _size: usize) -> bool {
        self.mode = String::from_utf8(self.get_plugin_configuration().unwrap_or_default())
            .unwrap_or_default();
        log::info!("probe: configured in mode {:?}", self.mode);
        self.requests_metric =
            proxy_wasm::hostcalls::define_metric(MetricType::Counter, "probe.requests").unwrap();
        self.sizes_metric =
            proxy_wasm::hostcalls::define_metric(MetricType::Histogram, "probe.body_bytes")
                .unwrap();
        if self.mode == "shared" {
            self.queue = Some(self.register_shared_queue("events"));
            self.set_tick_period(Duration::from_millis(20));
        }
        if self.mode == "root-log" {
            self.set_tick_period(Duration::from_millis(100));
        }
        true
    }

    fn on_tick(&mut self) {
        if self.mode == "root-log" {
            log::info!("probe: tick");
            return;
        }
        cas_increment("ticks");
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        while let Ok(Some(item)) = self.dequeue_shared_queue(queue_id) {
            cas_increment("dequeued");
            self.set_shared_data("last-event", Some(&item), None)
                .unwrap();
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(ProbeRequest {
            context_id,
            mode: self.mode.clone(),
            requests_metric: self.requests_metric,
            sizes_metric: self.sizes_metric,
            late_request_header: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Adds one to a decimal counter in shared data, retrying on CAS conflicts.
fn cas_increment(key: &str) -> u64 {
    loop {
        let (value, cas) = proxy_wasm::hostcalls::get_shared_data(key).unwrap();
        let current: u64 = value
            .map(|v| String::from_utf8(v).unwrap().parse().unwrap())
            .unwrap_or(0);
        let next = (current + 1).to_string();
        match proxy_wasm::hostcalls::set_shared_data(key, Some(next.as_bytes()), cas) {
            Ok(()) => return current + 1,
            Err(Status::CasMismatch) => continue,
            Err(status) => panic!("set_shared_data: {status:?}"),
        }
    }
}

struct ProbeRequest {
    context_id: u32,
    mode: String,
    requests_metric: u32,
    sizes_metric: u32,
    /// The status of reading a request header in the body phase, after the headers phase
    /// continued (the SDK's accessor would panic on it, so it is read through the raw call).
    late_request_header: Option<i32>,
}

extern "C" {
    fn proxy_get_header_map_value(
        map_type: i32,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> i32;
}

/// The raw status of `proxy_get_header_map_value` for a request header.
fn request_header_status(name: &str) -> i32 {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer it allocated through the SDK's allocator, and a size.
    let status =
        unsafe { proxy_get_header_map_value(0, name.as_ptr(), name.len(), &mut data, &mut size) };
    if !data.is_null() {
        // SAFETY: on success the host handed over `size` bytes allocated by the guest's allocator.
        drop(unsafe { Vec::from_raw_parts(data, size, size) });
    }
    status
}

impl Context for ProbeRequest {
    fn on_http_call_response(
        &mut self,
        _token: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        if num_headers == 0 {
            self.send_http_response(502, vec![("x-callout", "failed")], Some(b"callout failed"));
            return;
        }
        let status = self
            .get_http_call_response_header(":status")
            .unwrap_or_default();
        let body = self
            .get_http_call_response_body(0, body_size)
            .unwrap_or_default();
        if status == "200" {
            self.set_http_request_header("x-callout", Some(&String::from_utf8_lossy(&body)));
            self.resume_http_request();
        } else {
            self.send_http_response(403, vec![("x-callout-status", &status)], Some(&body));
        }
    }
}

impl HttpContext for ProbeRequest {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        match self.mode.as_str() {
            "callout" => {
                let path = self.get_http_request_header(":path").unwrap_or_default();
                let cluster = if path == "/unknown-cluster" {
                    "nope"
                } else {
                    "authz"
                };
                let dispatched = self.dispatch_http_call(
                    cluster,
                    vec![
                        (":method", "GET"),
                        (":path", &path),
                        (":authority", "authz"),
                    ],
                    None,
                    vec![],
                    Duration::from_secs(2),
                );
                match dispatched {
                    Ok(_) => Action::Pause,
                    Err(status) => {
                        self.send_http_response(
                            500,
                            vec![("x-dispatch", &format!("{status:?}"))],
                            None,
                        );
                        Action::Pause
                    }
                }
            }
            "shared" => {
                let hits = cas_increment("hits");
                self.set_http_request_header("x-hits", Some(&hits.to_string()));
                if let Some(queue) = self.resolve_shared_queue("", "events") {
                    let path = self.get_http_request_header(":path").unwrap_or_default();
                    self.enqueue_shared_queue(queue, Some(path.as_bytes()))
                        .unwrap();
                }
                Action::Continue
            }
            "local-reply" => {
                self.send_http_response(418, vec![("x-local", "yes")], Some(b"short and stout"));
                Action::Pause
            }
            _ => {
                self.add_http_request_header("x-probe", "1");
                let path = self.get_http_request_header(":path").unwrap_or_default();
                self.set_http_request_header(":path", Some(&format!("/probed{path}")));
                let prop = |path: Vec<&str>| {
                    self.get_property(path)
                        .map(|v| String::from_utf8_lossy(&v).into_owned())
                        .unwrap_or_else(|| "-".into())
                };
                let method = prop(vec!["request", "method"]);
                let source = prop(vec!["source", "address"]);
                let plugin = prop(vec!["plugin_name"]);
                let header = prop(vec!["request", "headers", "x-remove-me"]);
                let missing = prop(vec!["no", "such", "property"]);
                let principal = prop(vec!["source", "principal"]);
                let subject = prop(vec!["connection", "subject_peer_certificate"]);
                let context = self.context_id.to_string();
                self.set_http_request_header("x-remove-me", None);
                self.set_http_request_header("x-prop-method", Some(&method));
                self.set_http_request_header("x-prop-source", Some(&source));
                self.set_http_request_header("x-prop-plugin", Some(&plugin));
                self.set_http_request_header("x-prop-header", Some(&header));
                self.set_http_request_header("x-prop-missing", Some(&missing));
                self.set_http_request_header("x-prop-principal", Some(&principal));
                self.set_http_request_header("x-prop-peer-subject", Some(&subject));
                self.set_http_request_header("x-context", Some(&context));
                self.set_property(vec!["probe_state"], Some(b"from-request"));
                let pairs = self.get_http_request_headers().len();
                self.set_http_request_header("x-pairs", Some(&pairs.to_string()));
                Action::Continue
            }
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        // The headers phase continued: as in Envoy, its headers are gone (BAD_ARGUMENT, 2).
        self.late_request_header = Some(request_header_status(":path"));
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        proxy_wasm::hostcalls::record_metric(self.sizes_metric, body.len() as u64).unwrap();
        self.set_http_request_body(0, body_size, &body.to_ascii_uppercase());
        Action::Continue
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        self.add_http_request_trailer("x-trailer-probe", "seen");
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let state = self.get_property(vec!["probe_state"]).unwrap_or_default();
        let code = self
            .get_property(vec!["response", "code"])
            .map(|v| i64::from_le_bytes(v.try_into().unwrap()).to_string())
            .unwrap_or_default();
        self.set_http_response_header("x-prop-roundtrip", Some(&String::from_utf8_lossy(&state)));
        self.set_http_response_header("x-prop-code", Some(&code));
        if let Some(status) = self.late_request_header {
            self.set_http_response_header("x-late-request-header", Some(&status.to_string()));
        }
        self.set_http_response_header("content-length", None);
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        self.set_http_response_body(body_size, 0, b"!");
        self.set_http_response_body(0, 0, b"<");
        Action::Continue
    }

    fn on_log(&mut self) {
        proxy_wasm::hostcalls::increment_metric(self.requests_metric, 1).unwrap();
        println!("probe: request {} done", self.context_id);
    }
}
