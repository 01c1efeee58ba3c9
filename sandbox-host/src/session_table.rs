//! Sessions by id: who owns each, when it expires, and how many there may be.
//!
//! A session belongs to the verified identity that created it; to anyone else it does not exist
//! (the same `404` as an unknown id). Idle sessions expire after `idle_timeout_seconds`, every
//! session after `max_lifetime_seconds`; there are at most `max_per_identity` per identity and
//! `max_total` in all, each capped at `memory_bytes` of guest memory.

use crate::runtimes::Language;
use crate::session::LiveSession;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::OwnedMutexGuard;

/// `sessions:` in the configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionSettings {
    /// A session unused this long is deleted.
    pub idle_timeout_seconds: u64,
    /// A session is deleted this long after it was created, used or not.
    pub max_lifetime_seconds: u64,
    /// Sessions one identity may hold at once.
    pub max_per_identity: usize,
    /// Sessions the service holds at once (each keeps an instance slot and its memory).
    pub max_total: usize,
    /// Guest memory cap of each session, in bytes.
    pub memory_bytes: u64,
}

impl SessionSettings {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.idle_timeout_seconds == 0 || self.max_lifetime_seconds == 0 {
            return Err("sessions: timeouts must be at least 1 second".into());
        }
        if self.max_total > 1024 {
            return Err("sessions.max_total: at most 1024 (each holds an instance slot)".into());
        }
        if self.memory_bytes < 16 << 20 {
            return Err("sessions.memory_bytes: at least 16 MiB".into());
        }
        Ok(())
    }
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self {
            idle_timeout_seconds: 600,
            max_lifetime_seconds: 3600,
            max_per_identity: 2,
            max_total: 8,
            memory_bytes: 256 << 20,
        }
    }
}

/// A session's interpreter: `None` once it has ended (a trap, a quit, a cancelled execution).
pub type Interpreter = Option<LiveSession>;

/// One session.
pub struct Session {
    /// Its id (a random UUID).
    pub id: String,
    /// The verified identity that owns it.
    pub owner: String,
    /// Its language.
    pub language: Language,
    created: Instant,
    created_unix: u64,
    last_used: Mutex<Instant>,
    executions: AtomicU64,
    memory_bytes: AtomicU64,
    interpreter: Arc<tokio::sync::Mutex<Interpreter>>,
    /// `/scratch`, deleted with the session.
    _scratch: tempfile::TempDir,
}

/// What clients read about a session.
#[derive(Debug, Serialize)]
pub struct SessionView {
    /// Its id.
    pub id: String,
    /// Its language.
    pub language: Language,
    /// Unix seconds it was created at.
    pub created_at: u64,
    /// Executions run in it.
    pub executions: u64,
    /// Its guest's linear memory after the last execution, in bytes.
    pub memory_bytes: u64,
    /// Seconds of idleness after which it is deleted.
    pub idle_timeout_seconds: u64,
    /// Unix seconds after which it is deleted, used or not.
    pub expires_at: u64,
}

impl Session {
    /// Takes the interpreter for one execution, unless another execution holds it.
    pub fn try_claim(&self) -> Option<OwnedMutexGuard<Interpreter>> {
        self.interpreter.clone().try_lock_owned().ok()
    }

    /// Records its interpreter's start.
    pub fn started(&self, memory_bytes: u64) {
        self.memory_bytes.store(memory_bytes, Ordering::Relaxed);
    }

    /// Records a finished execution.
    pub fn used(&self, memory_bytes: u64) {
        *self.last_used.lock().expect("session lock") = Instant::now();
        self.executions.fetch_add(1, Ordering::Relaxed);
        self.memory_bytes.store(memory_bytes, Ordering::Relaxed);
    }

    /// What clients read about it.
    pub fn view(&self, settings: &SessionSettings) -> SessionView {
        SessionView {
            id: self.id.clone(),
            language: self.language,
            created_at: self.created_unix,
            executions: self.executions.load(Ordering::Relaxed),
            memory_bytes: self.memory_bytes.load(Ordering::Relaxed),
            idle_timeout_seconds: settings.idle_timeout_seconds,
            expires_at: self.created_unix + settings.max_lifetime_seconds,
        }
    }

    fn expired(&self, settings: &SessionSettings, now: Instant) -> bool {
        let idle = now.saturating_duration_since(*self.last_used.lock().expect("session lock"));
        idle >= Duration::from_secs(settings.idle_timeout_seconds)
            || now.saturating_duration_since(self.created)
                >= Duration::from_secs(settings.max_lifetime_seconds)
    }
}

/// Why a session was not created.
#[derive(Debug, thiserror::Error)]
pub enum SessionRefusal {
    /// The identity holds its maximum.
    #[error("this identity already holds {0} sessions, the maximum; delete one first")]
    PerIdentity(usize),
    /// The service holds its maximum.
    #[error("the service holds {0} sessions, its maximum; retry later")]
    Total(usize),
}

/// Every live session.
pub struct SessionTable {
    settings: SessionSettings,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
}

impl SessionTable {
    /// An empty table with these caps.
    pub fn new(settings: SessionSettings) -> Self {
        Self {
            settings,
            sessions: Mutex::default(),
        }
    }

    /// The caps and timeouts.
    pub fn settings(&self) -> &SessionSettings {
        &self.settings
    }

    /// Adds a session for `owner`, within the caps, and returns it with its interpreter claimed
    /// (empty until the caller has started one and put it in).
    pub fn create(
        &self,
        owner: &str,
        language: Language,
        scratch: tempfile::TempDir,
    ) -> Result<(Arc<Session>, OwnedMutexGuard<Interpreter>), SessionRefusal> {
        let mut sessions = self.sessions.lock().expect("session table lock");
        if sessions.len() >= self.settings.max_total {
            return Err(SessionRefusal::Total(self.settings.max_total));
        }
        let owned = sessions.values().filter(|s| s.owner == owner).count();
        if owned >= self.settings.max_per_identity {
            return Err(SessionRefusal::PerIdentity(self.settings.max_per_identity));
        }
        let now = Instant::now();
        let interpreter = Arc::new(tokio::sync::Mutex::new(None));
        let claimed = interpreter
            .clone()
            .try_lock_owned()
            .expect("a new lock is free");
        let session = Arc::new(Session {
            id: uuid::Uuid::new_v4().to_string(),
            owner: owner.to_string(),
            language,
            created: now,
            created_unix: unix_now(),
            last_used: Mutex::new(now),
            executions: AtomicU64::new(0),
            memory_bytes: AtomicU64::new(0),
            interpreter,
            _scratch: scratch,
        });
        sessions.insert(session.id.clone(), session.clone());
        Ok((session, claimed))
    }

    /// `owner`'s session `id`; `None` if there is none, it is someone else's, or it has expired
    /// (a session kept busy is never idle for the sweep, but its lifetime still ends here).
    pub fn get(&self, id: &str, owner: &str) -> Option<Arc<Session>> {
        let sessions = self.sessions.lock().expect("session table lock");
        sessions
            .get(id)
            .filter(|s| s.owner == owner && !s.expired(&self.settings, Instant::now()))
            .cloned()
    }

    /// `owner`'s sessions, oldest first.
    pub fn list(&self, owner: &str) -> Vec<Arc<Session>> {
        let sessions = self.sessions.lock().expect("session table lock");
        let mut owned: Vec<_> = sessions
            .values()
            .filter(|s| s.owner == owner)
            .cloned()
            .collect();
        owned.sort_by_key(|s| s.created);
        owned
    }

    /// Takes `owner`'s session `id` out of the table, if there is one. A running execution in it
    /// finishes; the interpreter goes with the last reference, which the caller should drop off
    /// the async workers (it unmaps the instance and deletes `/scratch`).
    pub fn remove(&self, id: &str, owner: &str) -> Option<Arc<Session>> {
        let mut sessions = self.sessions.lock().expect("session table lock");
        if sessions.get(id).is_some_and(|s| s.owner == owner) {
            return sessions.remove(id);
        }
        None
    }

    /// Takes every expired session not running an execution, and every ended one, out of the
    /// table, for the caller to drop (as for [`SessionTable::remove`]).
    pub fn expire(&self, now: Instant) -> Vec<Arc<Session>> {
        let mut sessions = self.sessions.lock().expect("session table lock");
        let gone: Vec<String> = sessions
            .iter()
            .filter(|(_, session)| match session.interpreter.try_lock() {
                Ok(interpreter) => interpreter.is_none() || session.expired(&self.settings, now),
                Err(_) => false,
            })
            .map(|(id, _)| id.clone())
            .collect();
        gone.iter().filter_map(|id| sessions.remove(id)).collect()
    }

    /// How many sessions there are.
    pub fn len(&self) -> usize {
        self.sessions.lock().expect("session table lock").len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(settings: SessionSettings) -> SessionTable {
        SessionTable::new(settings)
    }

    fn scratch() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn a_session_is_invisible_to_other_identities() {
        let table = table(SessionSettings::default());
        let (session, _claimed) = table.create("alice", Language::Python, scratch()).unwrap();
        assert!(table.get(&session.id, "alice").is_some());
        assert!(table.get(&session.id, "bob").is_none());
        assert!(table.list("bob").is_empty());
        assert!(table.remove(&session.id, "bob").is_none());
        assert!(table.remove(&session.id, "alice").is_some());
        assert!(table.get(&session.id, "alice").is_none());
    }

    #[test]
    fn caps_per_identity_and_in_total() {
        let table = table(SessionSettings {
            max_per_identity: 1,
            max_total: 2,
            ..SessionSettings::default()
        });
        table.create("alice", Language::Python, scratch()).unwrap();
        assert!(matches!(
            table.create("alice", Language::Python, scratch()),
            Err(SessionRefusal::PerIdentity(1))
        ));
        table.create("bob", Language::Python, scratch()).unwrap();
        assert!(matches!(
            table.create("carol", Language::Python, scratch()),
            Err(SessionRefusal::Total(2))
        ));
    }

    #[test]
    fn idle_and_ended_sessions_expire_but_not_while_claimed() {
        let settings = SessionSettings {
            idle_timeout_seconds: 60,
            max_lifetime_seconds: 600,
            ..SessionSettings::default()
        };
        let table = table(settings.clone());
        let (session, claim) = table.create("alice", Language::Python, scratch()).unwrap();
        let now = Instant::now();
        assert!(!session.expired(&settings, now));
        assert!(session.expired(&settings, now + Duration::from_secs(61)));
        assert!(session.expired(&settings, now + Duration::from_secs(601)));
        assert!(
            table.expire(now + Duration::from_secs(61)).is_empty(),
            "claimed"
        );
        // Released without an interpreter: it has ended, and goes at once.
        drop(claim);
        assert_eq!(table.expire(now).len(), 1);
        assert!(table.get(&session.id, "alice").is_none());
    }
}
