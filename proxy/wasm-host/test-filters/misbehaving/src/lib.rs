//! A filter that misbehaves on demand, to test the host's fault isolation and limits.
//! Behaviour by request path: `/panic` panics (a trap), `/loop` spins forever, `/oom` grows memory
//! without bound, `/bad-pointers` passes out-of-bounds pointers to host calls, `/grow-body`,
//! `/grow-headers`, `/big-property`, `/many-properties` and `/queue-flood` ask the host to hold
//! more than its bounds; `/big-callout` and `/callout-flood` ask for callouts past them and answer
//! how many the host took (`x-callouts-accepted`); anything else passes with `x-vm-id` naming this VM. The plugin
//! configuration `refuse` makes `on_configure` fail.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use std::time::Duration;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { vm_id: 0 }) });
}}

struct Root {
    vm_id: u64,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        if self.get_plugin_configuration().unwrap_or_default() == b"refuse" {
            log::error!("misbehaving: refusing configuration on purpose");
            return false;
        }
        self.vm_id = self
            .get_current_time()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        true
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request { vm_id: self.vm_id }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Request {
    vm_id: u64,
}

impl Context for Request {}

impl Request {
    /// Asks for up to `count` callouts to the `authz` cluster, stops at the first refusal, and
    /// answers how many the host accepted.
    fn callouts(&mut self, count: usize, body: Option<&[u8]>) -> Action {
        let headers = vec![
            (":method", "POST"),
            (":path", "/check"),
            (":authority", "authz"),
        ];
        let accepted = (0..count)
            .take_while(|_| {
                self.dispatch_http_call(
                    "authz",
                    headers.clone(),
                    body,
                    vec![],
                    Duration::from_secs(5),
                )
                .is_ok()
            })
            .count();
        let accepted = accepted.to_string();
        self.send_http_response(429, vec![("x-callouts-accepted", accepted.as_str())], None);
        Action::Pause
    }
}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, message: *const u8, size: usize) -> u32;
    fn proxy_get_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *mut *mut u8,
        value_size: *mut usize,
    ) -> u32;
}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        match path.as_str() {
            "/panic" => panic!("misbehaving: panic on purpose"),
            "/loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "/oom" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            // Past each of the host's bounds (`proxy_wasm_host::bounds`): the host refuses, the
            // SDK panics, the VM traps; the host never holds what was asked.
            "/grow-body" => {
                let chunk = vec![b'x'; 1 << 20];
                for _ in 0..64 {
                    self.set_http_request_body(usize::MAX, 0, &chunk);
                }
                Action::Continue
            }
            "/grow-headers" => {
                let value = "v".repeat(8 << 10);
                for i in 0..1024 {
                    self.add_http_request_header(&format!("x-grow-{i}"), &value);
                }
                Action::Continue
            }
            "/big-property" => {
                self.set_property(vec!["big"], Some(&vec![b'p'; 1 << 20]));
                Action::Continue
            }
            "/many-properties" => {
                for i in 0..1024 {
                    self.set_property(vec!["p", &i.to_string()], Some(b"v"));
                }
                Action::Continue
            }
            "/queue-flood" => {
                let queue = self.register_shared_queue("flood");
                let _ = self.enqueue_shared_queue(queue, Some(&vec![b'q'; 4 << 20]));
                Action::Continue
            }
            "/big-callout" => self.callouts(1, Some(&vec![b'c'; 8 << 20])),
            "/callout-flood" => self.callouts(300, None),
            "/bad-pointers" => {
                let far = 0xFFFF_FF00usize as *const u8;
                let log_status = unsafe { proxy_log(2, far, 1024) };
                let key = b":path";
                let get_status = unsafe {
                    proxy_get_header_map_value(
                        0,
                        key.as_ptr(),
                        key.len(),
                        0xFFFF_FFF0usize as *mut *mut u8,
                        0xFFFF_FFF8usize as *mut usize,
                    )
                };
                self.set_http_request_header("x-log-status", Some(&log_status.to_string()));
                self.set_http_request_header("x-get-status", Some(&get_status.to_string()));
                Action::Continue
            }
            _ => {
                self.set_http_request_header("x-vm-id", Some(&self.vm_id.to_string()));
                Action::Continue
            }
        }
    }
}
