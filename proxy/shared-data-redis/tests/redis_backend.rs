//! The Redis backend against a real `redis-server` started on a free loopback port.

use proxy_wasm_host::abi::Status;
use proxy_wasm_host::{MemoryLimits, MemorySharedData, SharedDataBackend};
use shared_data_redis::{ExpiryRules, RedisSettings, RedisSharedData, UnavailablePolicy};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// A `redis-server` child process, killed when dropped.
struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        Self::start_on(port)
    }

    fn start_on(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (make setup installs it)");
        let server = Self { child, port };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server did not start on port {port}");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    fn stop(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn settings(server: &RedisServer) -> RedisSettings {
    let mut settings = RedisSettings::new(server.url());
    settings.min_backoff = Duration::from_millis(20);
    settings.max_backoff = Duration::from_millis(200);
    settings
}

async fn backend(settings: RedisSettings) -> RedisSharedData {
    let backend = RedisSharedData::new(settings).expect("valid settings");
    assert!(backend.connect().await, "connects to the test server");
    backend
}

/// The compare-and-swap contract every backend keeps (filters' CAS loops rely on it).
async fn check_contract(store: &dyn SharedDataBackend) {
    let get = |key: &'static [u8]| store.get("vm", key);
    assert_eq!(get(b"k").await, Ok(None));
    assert_eq!(store.set("vm", b"k", b"1", 0).await, Ok(Status::Ok));
    let first = get(b"k").await.unwrap().expect("stored");
    assert_eq!(first.value, b"1");
    assert_ne!(first.cas, 0, "versions are never 0");
    assert_eq!(store.set("vm", b"k", b"2", first.cas).await, Ok(Status::Ok));
    assert_eq!(
        store.set("vm", b"k", b"3", first.cas).await,
        Ok(Status::CasMismatch),
        "a stale version is refused"
    );
    let second = get(b"k").await.unwrap().expect("stored");
    assert_eq!(second.value, b"2");
    assert_ne!(second.cas, first.cas);
    assert_eq!(
        store.get("other-vm", b"k").await,
        Ok(None),
        "vm_ids are namespaces"
    );
    assert_eq!(
        store.set("vm", b"absent", b"x", 12345).await,
        Ok(Status::Ok),
        "a version for an absent key does not conflict (as in Envoy)"
    );
    assert_eq!(store.set("vm", b"k", b"", second.cas).await, Ok(Status::Ok));
    assert_eq!(get(b"k").await, Ok(None), "an empty value deletes");
    let binary = [0u8, 255, b'|', b':', 10];
    assert_eq!(store.set("vm", &binary, &binary, 0).await, Ok(Status::Ok));
    assert_eq!(
        store.get("vm", &binary).await.unwrap().unwrap().value,
        binary
    );
}

#[tokio::test]
async fn redis_keeps_the_memory_backends_contract() {
    check_contract(&MemorySharedData::new(MemoryLimits::default())).await;
    let server = RedisServer::start();
    check_contract(&backend(settings(&server)).await).await;
}

/// Adds one to a counter with a CAS loop, as the rate-limit filter does.
async fn increment(store: &dyn SharedDataBackend) {
    loop {
        let current = store.get("vm", b"counter").await.unwrap();
        let (n, cas) = current.map_or((0, 0), |v| {
            (
                String::from_utf8(v.value).unwrap().parse::<u64>().unwrap(),
                v.cas,
            )
        });
        let next = (n + 1).to_string();
        if store.set("vm", b"counter", next.as_bytes(), cas).await == Ok(Status::Ok) {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_never_lose_an_update() {
    let server = RedisServer::start();
    let replicas = [
        Arc::new(backend(settings(&server)).await),
        Arc::new(backend(settings(&server)).await),
    ];
    // Created first: proxy-wasm has no create-if-absent, so concurrent creators (cas 0) race.
    replicas[0].set("vm", b"counter", b"0", 0).await.unwrap();
    let tasks: Vec<_> = (0..400)
        .map(|i| {
            let store = replicas[i % 2].clone();
            tokio::spawn(async move { increment(&*store).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    for replica in &replicas {
        let stats = replica.stats();
        assert_eq!(stats.fallback_operations, 0, "{stats:?}");
    }
    let total = replicas[0].get("vm", b"counter").await.unwrap().unwrap();
    assert_eq!(
        total.value, b"400",
        "every compare-and-swap increment counted once"
    );
}

async fn pttl(server: &RedisServer, key: &str) -> i64 {
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn keys_expire_by_prefix() {
    let server = RedisServer::start();
    let mut config = settings(&server);
    config.key_prefix = "t:".into();
    config.expiry = ExpiryRules {
        prefixes: vec![
            (b"cache|".to_vec(), Some(Duration::from_secs(3600))),
            (b"pinned".to_vec(), None),
        ],
        default: Some(Duration::from_secs(60)),
    };
    let store = backend(config).await;
    for key in ["cache|a", "ratelimit|ip|1", "pinned"] {
        store.set("vm", key.as_bytes(), b"v", 0).await.unwrap();
    }
    let cache = pttl(&server, "t:2:vm:cache|a").await;
    assert!(
        (3_500_000..=3_600_000).contains(&cache),
        "cache TTL {cache}"
    );
    let other = pttl(&server, "t:2:vm:ratelimit|ip|1").await;
    assert!((50_000..=60_000).contains(&other), "default TTL {other}");
    assert_eq!(pttl(&server, "t:2:vm:pinned").await, -1, "no TTL");
}

#[tokio::test]
async fn fail_open_uses_local_state_and_resumes_when_redis_returns() {
    let server = RedisServer::start();
    let store = backend(settings(&server)).await;
    store.set("vm", b"k", b"from-redis", 0).await.unwrap();
    let port = server.stop();

    // Redis is gone: calls answer from process-local state, none hangs.
    let answer = tokio::time::timeout(Duration::from_secs(5), store.get("vm", b"k")).await;
    assert_eq!(
        answer.expect("never hangs"),
        Ok(None),
        "local state is separate"
    );
    assert_eq!(store.set("vm", b"k", b"local", 0).await, Ok(Status::Ok));
    assert_eq!(
        store.get("vm", b"k").await.unwrap().unwrap().value,
        b"local"
    );
    let stats = store.stats();
    assert!(stats.fallback_operations >= 3, "{stats:?}");
    assert!(!stats.connected);

    // Redis returns (empty): after the backoff, calls reach it again.
    let server = RedisServer::start_on(port);
    let peer = backend(settings(&server)).await;
    peer.set("vm", b"k", b"shared-again", 0).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let seen = store.get("vm", b"k").await.unwrap().map(|v| v.value);
        if seen.as_deref() == Some(b"shared-again".as_slice()) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never reconnected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(store.stats().reconnects >= 1);
    assert!(store.stats().connected);
}

#[tokio::test]
async fn fail_closed_refuses_while_redis_is_unreachable() {
    let server = RedisServer::start();
    let mut config = settings(&server);
    config.on_unavailable = UnavailablePolicy::FailClosed;
    let store = backend(config).await;
    server.stop();
    let get = tokio::time::timeout(Duration::from_secs(5), store.get("vm", b"k")).await;
    assert_eq!(get.expect("never hangs"), Err(proxy_wasm_host::Unavailable));
    assert_eq!(
        store.set("vm", b"k", b"v", 0).await,
        Err(proxy_wasm_host::Unavailable)
    );
    assert!(store.stats().refused_operations >= 2);
}

#[tokio::test]
async fn a_stalled_redis_times_out_instead_of_hanging() {
    let server = RedisServer::start();
    let mut config = settings(&server);
    config.operation_timeout = Duration::from_millis(100);
    let store = backend(config).await;
    store.set("vm", b"k", b"v", 0).await.unwrap();
    server.signal("-STOP");
    let get = tokio::time::timeout(Duration::from_secs(5), store.get("vm", b"k")).await;
    server.signal("-CONT");
    assert_eq!(get.expect("bounded by the operation timeout"), Ok(None));
    assert!(store.stats().timeouts >= 1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while store.get("vm", b"k").await.unwrap().is_none() {
        assert!(tokio::time::Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
