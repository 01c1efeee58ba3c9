//! Filter chains: loading a route's proxy-wasm filters through the host, and running one request
//! through them. Requests pass the filters in order, responses in reverse order (as in Envoy).

use crate::config::{value_bytes, Config, ConfigError, FilterChainConfig};
use crate::metrics::{FilterPhase, FilterTimers, GatewayMetrics};
use proxy_wasm_host::{
    Headers, Host, HttpStream, LocalResponse, Plugin, PluginSpec, StreamInfo, Verdict,
};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// A loaded filter chain.
pub struct FilterChain {
    /// The chain's name.
    pub name: String,
    plugins: Vec<Plugin>,
    /// Each filter's name and timers, made on the first request and shared by every run.
    members: OnceLock<Arc<[ChainMember]>>,
}

/// What a run needs of each filter besides its stream.
struct ChainMember {
    name: String,
    timers: FilterTimers,
}

impl FilterChain {
    /// Compiles each filter and checks that it accepts its configuration. `field` names the chain
    /// in errors, so a filter that refuses its configuration is reported against its entry.
    pub async fn load(
        host: &Host,
        config: &Config,
        chain: &FilterChainConfig,
        field: &str,
    ) -> Result<Self, ConfigError> {
        let mut plugins = Vec::with_capacity(chain.filters.len());
        for (i, filter) in chain.filters.iter().enumerate() {
            let field = format!("{field}.filters[{i}]");
            let path = config.resolve(&filter.wasm);
            let wasm = std::fs::read(&path).map_err(|e| ConfigError {
                field: format!("{field}.wasm"),
                message: format!("cannot read {}: {e}", path.display()),
            })?;
            let mut spec =
                PluginSpec::new(&filter.name, config.plugin_configuration(filter, &field)?);
            spec.root_id = filter.root_id.clone();
            spec.vm_configuration = value_bytes(filter.vm_configuration.as_ref());
            spec.failure_policy = filter.failure_policy;
            spec.limits = filter.limits.vm_limits();
            let plugin = host
                .load_plugin(&wasm, spec)
                .await
                .map_err(|e| ConfigError {
                    field,
                    message: e.to_string(),
                })?;
            plugins.push(plugin);
        }
        Ok(Self {
            name: chain.name.clone(),
            plugins,
            members: OnceLock::new(),
        })
    }

    /// The names of its filters, in request order.
    pub fn filter_names(&self) -> impl Iterator<Item = &str> {
        self.plugins.iter().map(Plugin::name)
    }

    /// Starts one request through every filter of the chain.
    pub fn start(&self, info: StreamInfo, metrics: &GatewayMetrics) -> ChainRun {
        let streams = self
            .plugins
            .iter()
            .map(|plugin| plugin.new_http_stream(info.clone()))
            .collect();
        let members = self.members.get_or_init(|| {
            self.plugins
                .iter()
                .map(|plugin| ChainMember {
                    name: plugin.name().to_string(),
                    timers: metrics.filter_timers(plugin.name()),
                })
                .collect()
        });
        ChainRun {
            members: members.clone(),
            streams,
            outcome: Outcome::Passed,
        }
    }
}

/// What the chain did to a request, for the access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every filter let the request through.
    Passed,
    /// A filter answered the request itself.
    Answered {
        /// The filter.
        filter: String,
        /// The status it sent.
        status: u16,
    },
    /// A filter reset the stream.
    Reset {
        /// The filter.
        filter: String,
    },
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Passed => f.write_str("passed"),
            Outcome::Answered { filter, status } => write!(f, "answered:{filter}:{status}"),
            Outcome::Reset { filter } => write!(f, "reset:{filter}"),
        }
    }
}

/// One request's streams through a chain.
pub struct ChainRun {
    members: Arc<[ChainMember]>,
    streams: Vec<HttpStream>,
    /// What happened so far.
    pub outcome: Outcome,
}

/// The result of a phase across the chain.
#[derive(Debug)]
pub enum ChainVerdict {
    /// Go on.
    Continue,
    /// A filter is buffering the body; forward nothing yet.
    Buffer,
    /// Answer with this response (already passed through the response phases).
    Respond(LocalResponse),
    /// Reset the stream.
    Reset,
}

impl ChainRun {
    /// Request headers, through the filters in order.
    pub async fn request_headers(
        &mut self,
        headers: &mut Headers,
        end_of_stream: bool,
    ) -> ChainVerdict {
        for i in 0..self.streams.len() {
            let started = Instant::now();
            let verdict = self.streams[i]
                .on_request_headers(headers, end_of_stream)
                .await;
            self.observe(i, FilterPhase::RequestHeaders, started);
            if let Some(done) = self.settle(i, verdict).await {
                return done;
            }
        }
        ChainVerdict::Continue
    }

    /// A request body chunk, through the filters in order.
    pub async fn request_body(&mut self, chunk: &mut Vec<u8>, end_of_stream: bool) -> ChainVerdict {
        for i in 0..self.streams.len() {
            let started = Instant::now();
            let verdict = self.streams[i].on_request_body(chunk, end_of_stream).await;
            self.observe(i, FilterPhase::RequestBody, started);
            if let Some(done) = self.settle(i, verdict).await {
                return done;
            }
        }
        ChainVerdict::Continue
    }

    /// Response headers, through the filters in reverse order.
    pub async fn response_headers(
        &mut self,
        headers: &mut Headers,
        end_of_stream: bool,
    ) -> ChainVerdict {
        for i in (0..self.streams.len()).rev() {
            let started = Instant::now();
            let verdict = self.streams[i]
                .on_response_headers(headers, end_of_stream)
                .await;
            self.observe(i, FilterPhase::ResponseHeaders, started);
            if let Some(done) = self.stop(i, verdict) {
                return done;
            }
        }
        ChainVerdict::Continue
    }

    /// A response body chunk, through the filters in reverse order.
    pub async fn response_body(
        &mut self,
        chunk: &mut Vec<u8>,
        end_of_stream: bool,
    ) -> ChainVerdict {
        for i in (0..self.streams.len()).rev() {
            let started = Instant::now();
            let verdict = self.streams[i].on_response_body(chunk, end_of_stream).await;
            self.observe(i, FilterPhase::ResponseBody, started);
            if let Some(done) = self.stop(i, verdict) {
                return done;
            }
        }
        ChainVerdict::Continue
    }

    /// Ends every stream (`on_done`, `on_log`, `on_delete`).
    pub async fn finish(self) {
        for stream in self.streams {
            stream.finish().await;
        }
    }

    /// A request-phase verdict from filter `i`: `None` to go on to the next filter. A local reply
    /// is first run through the chain's response phases.
    async fn settle(&mut self, i: usize, verdict: Verdict) -> Option<ChainVerdict> {
        match verdict {
            Verdict::Respond(response) => {
                self.answered(i, response.status);
                Some(self.through_response_phases(response).await)
            }
            other => self.stop(i, other),
        }
    }

    /// Runs a response the proxy or a filter made up (a local reply, a gateway error) through
    /// the response phases, as Envoy does, so filters can label, count or replace it.
    pub async fn through_response_phases(&mut self, mut response: LocalResponse) -> ChainVerdict {
        let mut headers = response.headers.clone();
        headers.replace(":status", response.status.to_string().as_bytes());
        match self
            .response_headers(&mut headers, response.body.is_empty())
            .await
        {
            ChainVerdict::Respond(replacement) => return ChainVerdict::Respond(replacement),
            ChainVerdict::Reset => return ChainVerdict::Reset,
            ChainVerdict::Continue | ChainVerdict::Buffer => {}
        }
        if let Some(status) = headers.get_str(":status").and_then(|s| s.parse().ok()) {
            response.status = status;
        }
        headers.remove(":status");
        response.headers = headers;
        if !response.body.is_empty() {
            let mut body = std::mem::take(&mut response.body);
            if let ChainVerdict::Reset = self.response_body(&mut body, true).await {
                return ChainVerdict::Reset;
            }
            response.body = body;
        }
        ChainVerdict::Respond(response)
    }

    /// A response-phase verdict from filter `i`: `None` to go on to the next filter.
    fn stop(&mut self, i: usize, verdict: Verdict) -> Option<ChainVerdict> {
        match verdict {
            Verdict::Continue => None,
            Verdict::Buffer => Some(ChainVerdict::Buffer),
            Verdict::Reset => Some(self.reset(i)),
            Verdict::Respond(response) => {
                self.answered(i, response.status);
                Some(ChainVerdict::Respond(response))
            }
        }
    }

    fn answered(&mut self, i: usize, status: u16) {
        if self.outcome == Outcome::Passed {
            self.outcome = Outcome::Answered {
                filter: self.members[i].name.clone(),
                status,
            };
        }
    }

    fn reset(&mut self, i: usize) -> ChainVerdict {
        self.outcome = Outcome::Reset {
            filter: self.members[i].name.clone(),
        };
        ChainVerdict::Reset
    }

    fn observe(&self, i: usize, phase: FilterPhase, started: Instant) {
        self.members[i].timers.observe(phase, started.elapsed());
    }
}
