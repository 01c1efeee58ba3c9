//! proxy-wasm shell of the auth filter: reads the request, asks [`Authenticator`], applies the decision.

use crate::config::AuthConfig;
use crate::decision::{Authenticator, Decision};
use filter_common::error_body;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(AuthRoot { authenticator: None }) });
}}

struct AuthRoot {
    authenticator: Option<Rc<Authenticator>>,
}

impl Context for AuthRoot {}

impl RootContext for AuthRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match AuthConfig::from_json(&bytes) {
            Ok(config) => {
                log::info!(
                    "auth-filter: configured with {} API key(s), key header {:?}",
                    config.api_key.keys.len(),
                    config.api_key.header
                );
                self.authenticator = Some(Rc::new(Authenticator::new(config)));
                true
            }
            Err(err) => {
                log::error!("auth-filter: invalid plugin configuration: {err}");
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let authenticator = self.authenticator.clone()?;
        Some(Box::new(AuthRequest { authenticator }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct AuthRequest {
    authenticator: Rc<Authenticator>,
}

impl Context for AuthRequest {}

impl HttpContext for AuthRequest {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let config = self.authenticator.config();
        // A client must never be able to choose its own identity.
        self.set_http_request_header(&config.identity_header, None);
        let key = self.get_http_request_header_bytes(&config.api_key.header);
        let path = self.get_http_request_header(":path").unwrap_or_default();
        match self.authenticator.authenticate(key.as_deref(), &path) {
            Decision::Allow(allow) => {
                if let Some(header) = &allow.remove_header {
                    self.set_http_request_header(header, None);
                }
                if let Some(path) = &allow.rewritten_path {
                    self.set_http_request_header(":path", Some(path));
                }
                self.set_http_request_header(&config.identity_header, Some(&allow.identity));
                Action::Continue
            }
            Decision::Deny(denial) => {
                let request_id = self.get_http_request_header("x-request-id");
                let body = error_body(
                    denial.status,
                    denial.code,
                    denial.message,
                    request_id.as_deref(),
                );
                self.send_http_response(
                    u32::from(denial.status),
                    vec![
                        ("content-type", "application/json"),
                        ("www-authenticate", &denial.www_authenticate),
                    ],
                    Some(&body),
                );
                Action::Pause
            }
        }
    }
}
