//! A cap on the connections a listener keeps open (`listeners[].max_connections`). Past it a new
//! connection is closed at once, as with Envoy's listener `max_connections`, so idle or slow
//! clients cannot hold every file descriptor and the memory their buffers need.

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use prometheus::{IntCounter, IntGauge};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Wraps a listener's application so that at most `max` connections are served at once.
pub struct ConnectionLimit<A> {
    app: Arc<A>,
    max: usize,
    open: AtomicUsize,
    open_gauge: IntGauge,
    refused: IntCounter,
}

impl<A> ConnectionLimit<A> {
    /// `app` behind a cap of `max` open connections, reported on `open_gauge` and `refused`.
    pub fn new(app: A, max: usize, open_gauge: IntGauge, refused: IntCounter) -> Self {
        Self {
            app: Arc::new(app),
            max,
            open: AtomicUsize::new(0),
            open_gauge,
            refused,
        }
    }

    fn claim(&self) -> Option<OpenConnection<'_, A>> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            self.refused.inc();
            return None;
        }
        self.open_gauge.inc();
        Some(OpenConnection(self))
    }
}

/// One counted connection; dropping it frees its place.
struct OpenConnection<'a, A>(&'a ConnectionLimit<A>);

impl<A> Drop for OpenConnection<'_, A> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.open_gauge.dec();
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for ConnectionLimit<A> {
    async fn process_new(
        self: &Arc<Self>,
        session: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // Dropping the stream closes a connection past the cap.
        let _open = self.claim()?;
        // Every request of a keep-alive connection is served here (Pingora's own loop would hand
        // the connection back between requests), so the connection holds its place while idle.
        let mut session = session;
        loop {
            session = self.app.process_new(session, shutdown).await?;
        }
    }

    async fn cleanup(&self) {
        self.app.cleanup().await;
    }
}
