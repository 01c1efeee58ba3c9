//! Budgets in shared data: tokens per fixed window and key value, reserved before a request goes
//! upstream and settled (refunded, or charged the difference) once its usage is known.
//!
//! Each budget window is one shared-data value, the tokens used, changed only by compare-and-swap,
//! so workers and (with Redis) replicas share it. Its key names the window's end, so the root
//! context can delete windows that are over.

use crate::config::{AiTokensConfig, BudgetConfig, KeyConfig};
use filter_common::SharedStore;
use sha2::{Digest, Sha256};

/// Prefix of every budget key in shared data.
pub const KEY_PREFIX: &str = "aitokens|";
/// Attempts at a compare-and-swap before giving up on a contended window (and letting the request
/// through: the budget never fails a request for its own contention).
const MAX_CAS_ATTEMPTS: usize = 32;
/// Key values longer than this are hashed, so a huge header cannot make a huge key.
const MAX_KEY_VALUE_BYTES: usize = 128;

/// What budgets read from a request besides its body.
pub trait RequestFacts {
    /// A request header (lowercase name); invalid UTF-8 arrives as U+FFFD.
    fn header(&self, name: &str) -> Option<String>;
}

/// The state of the tightest budget after a request, for `x-ratelimit-*-tokens` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// The budget's `tokens`.
    pub limit: u64,
    /// Tokens left in its window.
    pub remaining: u64,
    /// Seconds until its window ends.
    pub reset_seconds: u64,
}

/// Tokens reserved for one request, to settle once its usage is known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reservation {
    /// Where it was reserved, per budget that applied.
    holds: Vec<Hold>,
    /// The tokens reserved in each.
    pub tokens: u64,
}

/// One budget's part of a reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hold {
    /// The budget's index in the configuration.
    budget: usize,
    /// The request's value of the budget's key.
    value: String,
    /// The window reserved in.
    key: String,
}

/// A budget's answer to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Reserved in every budget that applies; the tightest is reported (none applied: `None`).
    Reserved(Reservation, Option<Report>),
    /// `budget` has too few tokens left; nothing is reserved anywhere.
    Refused {
        /// The budget's name.
        budget: String,
        /// Its state.
        report: Report,
        /// The request needs more than the budget's whole window: retrying cannot help.
        never_fits: bool,
    },
}

/// The configured budgets.
pub struct Budgets {
    config: AiTokensConfig,
}

impl Reservation {
    /// The shared-data keys of the windows reserved in (for expiry).
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.holds.iter().map(|hold| hold.key.as_str())
    }
}

impl Budgets {
    /// Budgets from a validated configuration.
    pub fn new(config: AiTokensConfig) -> Self {
        Self { config }
    }

    /// The configuration.
    pub fn config(&self) -> &AiTokensConfig {
        &self.config
    }

    /// Reserves `tokens` in every budget that applies to the request at `now` (Unix seconds).
    pub fn reserve(
        &self,
        request: &dyn RequestFacts,
        model: Option<&str>,
        tokens: u64,
        store: &dyn SharedStore,
        now: u64,
    ) -> Outcome {
        let mut reservation = Reservation {
            holds: Vec::new(),
            tokens,
        };
        let mut tightest: Option<Report> = None;
        for (index, budget) in self.config.budgets.iter().enumerate() {
            // A request without the key's value (no identity, say) is not counted by this budget.
            let Some(value) = self.key_value(budget, request, model) else {
                continue;
            };
            let (key, reset_seconds) = current_window(budget, &value, now);
            match add(store, &key, tokens, Some(budget.tokens)) {
                Added::Yes { used } => {
                    let report = Report {
                        limit: budget.tokens,
                        remaining: budget.tokens.saturating_sub(used),
                        reset_seconds,
                    };
                    if tightest.is_none_or(|t| report.remaining < t.remaining) {
                        tightest = Some(report);
                    }
                    reservation.holds.push(Hold {
                        budget: index,
                        value,
                        key,
                    });
                }
                Added::OverLimit { used } => {
                    self.settle(&reservation, 0, store, now);
                    return Outcome::Refused {
                        budget: budget.name.clone(),
                        report: Report {
                            limit: budget.tokens,
                            remaining: budget.tokens.saturating_sub(used),
                            reset_seconds,
                        },
                        never_fits: tokens > budget.tokens,
                    };
                }
                Added::Contended => log::warn!(
                    "ai-tokens: window of budget {:?} too contended; not counted",
                    budget.name
                ),
            }
        }
        Outcome::Reserved(reservation, tightest)
    }

    /// Grows a reservation by `tokens` in every window it holds, unless one of its budgets cannot
    /// cover them (then nothing changes and the answer is false). A window that has ended and
    /// gone is not re-created: its budget no longer limits this request.
    pub fn extend(
        &self,
        reservation: &mut Reservation,
        tokens: u64,
        store: &dyn SharedStore,
    ) -> bool {
        let mut grown: Vec<&str> = Vec::new();
        for hold in &reservation.holds {
            let limit = self.config.budgets[hold.budget].tokens;
            let grow = |used: u64| Some(used.saturating_add(tokens)).filter(|next| *next <= limit);
            match adjust_existing(store, &hold.key, grow) {
                Adjusted::Changed => grown.push(&hold.key),
                Adjusted::OverLimit => {
                    for key in grown {
                        adjust_existing(store, key, |used| Some(used.saturating_sub(tokens)));
                    }
                    return false;
                }
                Adjusted::Gone => {}
            }
        }
        reservation.tokens = reservation.tokens.saturating_add(tokens);
        true
    }

    /// Settles a reservation at `actual` tokens at `now`: the unused part is refunded to the
    /// window it was reserved in (unless that window has ended and gone), and an overrun is
    /// charged to the window it was reserved in while it lasts, else to the budget's current one.
    /// Returns the windows it created, for expiry.
    pub fn settle(
        &self,
        reservation: &Reservation,
        actual: u64,
        store: &dyn SharedStore,
        now: u64,
    ) -> Vec<String> {
        let mut created = Vec::new();
        for hold in &reservation.holds {
            if actual < reservation.tokens {
                adjust_existing(store, &hold.key, |used| {
                    Some(used.saturating_sub(reservation.tokens - actual))
                });
                continue;
            }
            let overrun = actual - reservation.tokens;
            if overrun == 0 {
                continue;
            }
            let charged =
                adjust_existing(store, &hold.key, |used| Some(used.saturating_add(overrun)));
            if charged != Adjusted::Changed {
                let budget = &self.config.budgets[hold.budget];
                let (key, _) = current_window(budget, &hold.value, now);
                if matches!(add(store, &key, overrun, None), Added::Yes { .. }) {
                    created.push(key);
                }
            }
        }
        created
    }

    fn key_value(
        &self,
        budget: &BudgetConfig,
        request: &dyn RequestFacts,
        model: Option<&str>,
    ) -> Option<String> {
        let value = match &budget.key {
            KeyConfig::Identity => request.header(&self.config.identity_header)?,
            KeyConfig::Tenant => request.header(&self.config.tenant_header)?,
            KeyConfig::Model => model?.to_owned(),
            KeyConfig::Header(name) => request.header(name)?,
            KeyConfig::ApiKey(name) => hex::encode(Sha256::digest(request.header(name)?)),
        };
        (!value.is_empty()).then_some(value)
    }
}

/// The key of `budget`'s window holding `now` for `value`, and the seconds until it ends.
fn current_window(budget: &BudgetConfig, value: &str, now: u64) -> (String, u64) {
    let period = budget.per.seconds();
    let window_end = (now / period + 1) * period;
    (
        window_key(&budget.name, window_end, value),
        window_end - now,
    )
}

/// The shared-data key of a budget's window ending at `window_end` for one key value.
fn window_key(budget: &str, window_end: u64, value: &str) -> String {
    if value.len() > MAX_KEY_VALUE_BYTES {
        let digest = hex::encode(Sha256::digest(value));
        format!("{KEY_PREFIX}{budget}|{window_end}|#{digest}")
    } else {
        format!("{KEY_PREFIX}{budget}|{window_end}|{value}")
    }
}

/// Whether a budget key's window has ended at `now`: it may be deleted.
pub fn window_over(key: &str, now: u64) -> bool {
    let end = key
        .strip_prefix(KEY_PREFIX)
        .and_then(|rest| rest.split('|').nth(1))
        .and_then(|end| end.parse::<u64>().ok());
    end.is_none_or(|end| now >= end)
}

enum Added {
    Yes { used: u64 },
    OverLimit { used: u64 },
    Contended,
}

fn decode(value: Option<&[u8]>) -> u64 {
    value
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Adds `tokens` to the window at `key`, unless that would pass `limit`.
fn add(store: &dyn SharedStore, key: &str, tokens: u64, limit: Option<u64>) -> Added {
    for _ in 0..MAX_CAS_ATTEMPTS {
        let (value, cas) = store.get(key);
        let used = decode(value.as_deref());
        let next = used.saturating_add(tokens);
        if limit.is_some_and(|limit| next > limit) {
            return Added::OverLimit { used };
        }
        if store.set(key, next.to_string().as_bytes(), cas.unwrap_or(0)) {
            return Added::Yes { used: next };
        }
    }
    Added::Contended
}

/// What [`adjust_existing`] did to a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Adjusted {
    Changed,
    /// The change would pass the window's limit; nothing was written.
    OverLimit,
    /// The window ended and was deleted (or stayed contended); nothing was written.
    Gone,
}

/// Changes the window at `key` with `change`, if it still exists; `change` returns `None` when
/// the new value would pass a limit.
fn adjust_existing(
    store: &dyn SharedStore,
    key: &str,
    change: impl Fn(u64) -> Option<u64>,
) -> Adjusted {
    for _ in 0..MAX_CAS_ATTEMPTS {
        let (value, cas) = store.get(key);
        let (Some(value), Some(cas)) = (value.filter(|v| !v.is_empty()), cas) else {
            return Adjusted::Gone;
        };
        let Some(next) = change(decode(Some(&value))) else {
            return Adjusted::OverLimit;
        };
        if store.set(key, next.to_string().as_bytes(), cas) {
            return Adjusted::Changed;
        }
    }
    log::warn!("ai-tokens: could not change a window (contended)");
    Adjusted::Gone
}

#[cfg(test)]
mod tests {
    use super::*;
    use filter_common::testing::MemoryStore;
    use std::collections::HashMap;

    struct Request(HashMap<&'static str, &'static str>);

    impl RequestFacts for Request {
        fn header(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|v| v.to_string())
        }
    }

    fn budgets(json: &str) -> Budgets {
        Budgets::new(AiTokensConfig::from_json(json.as_bytes()).unwrap())
    }

    fn alice() -> Request {
        Request(HashMap::from([
            ("x-gateway-identity", "alice"),
            ("x-gateway-tenant", "acme"),
        ]))
    }

    const PER_MINUTE: &str =
        r#"{"budgets": [{"name": "m", "key": "identity", "tokens": 1000, "per": "minute"}]}"#;

    #[test]
    fn reservations_count_until_the_budget_is_spent_then_the_window_ends() {
        let budgets = budgets(PER_MINUTE);
        let store = MemoryStore::default();
        let now = 600; // a window starts
        for expected_remaining in [600, 200] {
            let Outcome::Reserved(_, Some(report)) =
                budgets.reserve(&alice(), None, 400, &store, now)
            else {
                panic!("reserved");
            };
            assert_eq!(report.remaining, expected_remaining);
            assert_eq!(report.reset_seconds, 60);
        }
        let refused = budgets.reserve(&alice(), None, 400, &store, now + 59);
        assert_eq!(
            refused,
            Outcome::Refused {
                budget: "m".into(),
                report: Report {
                    limit: 1000,
                    remaining: 200,
                    reset_seconds: 1
                },
                never_fits: false,
            }
        );
        assert!(matches!(
            budgets.reserve(&alice(), None, 400, &store, now + 60),
            Outcome::Reserved(..)
        ));
        let refused = budgets.reserve(&alice(), None, 1001, &store, now + 60);
        assert!(matches!(
            refused,
            Outcome::Refused {
                never_fits: true,
                ..
            }
        ));
    }

    #[test]
    fn settling_refunds_the_unused_part_and_charges_an_overrun() {
        let budgets = budgets(PER_MINUTE);
        let store = MemoryStore::default();
        let Outcome::Reserved(reservation, _) = budgets.reserve(&alice(), None, 900, &store, 0)
        else {
            panic!("reserved");
        };
        budgets.settle(&reservation, 100, &store, 1);
        let Outcome::Reserved(second, Some(report)) =
            budgets.reserve(&alice(), None, 100, &store, 1)
        else {
            panic!("the refund made room");
        };
        assert_eq!(report.remaining, 800);
        budgets.settle(&second, 500, &store, 2);
        let Outcome::Refused { report, .. } = budgets.reserve(&alice(), None, 500, &store, 2)
        else {
            panic!("the overrun was charged");
        };
        assert_eq!(report.remaining, 400);
        budgets.settle(&second, 0, &store, 2);
    }

    #[test]
    fn the_tightest_budget_refuses_and_nothing_stays_reserved() {
        let budgets = budgets(
            r#"{"budgets": [
                {"name": "identity", "key": "identity", "tokens": 10000, "per": "minute"},
                {"name": "tenant", "key": "tenant", "tokens": 500, "per": "day"},
                {"name": "model", "key": "model", "tokens": 10000, "per": "hour"}
            ]}"#,
        );
        let store = MemoryStore::default();
        let Outcome::Reserved(_, Some(report)) =
            budgets.reserve(&alice(), Some("gpt"), 300, &store, 0)
        else {
            panic!("reserved");
        };
        assert_eq!(
            (report.limit, report.remaining),
            (500, 200),
            "tightest reported"
        );
        let refused = budgets.reserve(&alice(), Some("gpt"), 300, &store, 0);
        assert!(matches!(refused, Outcome::Refused { ref budget, .. } if budget == "tenant"));
        // The identity budget got its refused reservation back.
        let Outcome::Reserved(_, _) = budgets.reserve(&alice(), None, 200, &store, 0) else {
            panic!("200 still fit the tenant");
        };
        let identity_key = window_key("identity", 60, "alice");
        assert_eq!(decode(store.get(&identity_key).0.as_deref()), 500);
    }

    #[test]
    fn requests_without_the_keys_value_are_not_counted() {
        let budgets = budgets(PER_MINUTE);
        let store = MemoryStore::default();
        let anonymous = Request(HashMap::new());
        assert_eq!(
            budgets.reserve(&anonymous, None, 5000, &store, 0),
            Outcome::Reserved(
                Reservation {
                    holds: vec![],
                    tokens: 5000
                },
                None
            )
        );
        assert!(store.is_empty());
    }

    #[test]
    fn api_keys_are_hashed_and_long_values_bounded() {
        let budgets = budgets(
            r#"{"budgets": [{"name": "k", "key": {"api_key": "x-api-key"}, "tokens": 10, "per": "minute"},
                            {"name": "h", "key": {"header": "x-long"}, "tokens": 10, "per": "minute"}]}"#,
        );
        let store = MemoryStore::default();
        let long: &'static str = Box::leak("v".repeat(10_000).into_boxed_str());
        let request = Request(HashMap::from([
            ("x-api-key", "sk-secret"),
            ("x-long", long),
        ]));
        let Outcome::Reserved(reservation, _) = budgets.reserve(&request, None, 1, &store, 0)
        else {
            panic!("reserved");
        };
        for key in reservation.keys() {
            assert!(!key.contains("sk-secret") && key.len() < 200, "{key}");
        }
    }

    #[test]
    fn contention_lets_the_request_through_and_windows_expire() {
        let budgets = budgets(PER_MINUTE);
        let store = MemoryStore::default();
        store.fail_next_writes(MAX_CAS_ATTEMPTS);
        assert!(matches!(
            budgets.reserve(&alice(), None, 10, &store, 0),
            Outcome::Reserved(..)
        ));
        let key = window_key("m", 60, "alice");
        assert!(!window_over(&key, 59) && window_over(&key, 60));
        assert!(
            window_over("garbage", 0),
            "a key it cannot read is not kept"
        );
    }

    #[test]
    fn an_overrun_after_the_window_ended_is_charged_to_the_current_one() {
        let budgets = budgets(PER_MINUTE);
        let store = MemoryStore::default();
        let Outcome::Reserved(reservation, _) = budgets.reserve(&alice(), None, 100, &store, 50)
        else {
            panic!("reserved");
        };
        let old = window_key("m", 60, "alice");
        assert!(
            store.set(&old, b"", 0),
            "the sweep deleted the ended window"
        );
        let created = budgets.settle(&reservation, 400, &store, 70);
        let current = window_key("m", 120, "alice");
        assert_eq!(created, vec![current.clone()]);
        assert_eq!(decode(store.get(&current).0.as_deref()), 300);
        assert!(!store.contains(&old), "an ended window is not made again");
        // A refund to an ended window is dropped, and settling at the estimate writes nothing.
        assert!(budgets.settle(&reservation, 0, &store, 70).is_empty());
        assert!(budgets.settle(&reservation, 100, &store, 70).is_empty());
        assert_eq!(decode(store.get(&current).0.as_deref()), 300);
    }

    #[test]
    fn a_reservation_grows_only_while_every_budget_covers_it() {
        let budgets = budgets(
            r#"{"budgets": [
                {"name": "identity", "key": "identity", "tokens": 1000, "per": "minute"},
                {"name": "tenant", "key": "tenant", "tokens": 300, "per": "day"}
            ]}"#,
        );
        let store = MemoryStore::default();
        let Outcome::Reserved(mut reservation, _) = budgets.reserve(&alice(), None, 200, &store, 0)
        else {
            panic!("reserved");
        };
        assert!(budgets.extend(&mut reservation, 100, &store));
        assert_eq!(reservation.tokens, 300);
        assert!(
            !budgets.extend(&mut reservation, 1, &store),
            "the tenant's 300 are spent"
        );
        assert_eq!(reservation.tokens, 300);
        let identity = window_key("identity", 60, "alice");
        assert_eq!(
            decode(store.get(&identity).0.as_deref()),
            300,
            "the refused growth rolled back"
        );
        budgets.settle(&reservation, 0, &store, 1);
        assert_eq!(decode(store.get(&identity).0.as_deref()), 0);
    }

    #[test]
    fn a_garbled_window_counts_as_empty_and_refunds_stop_at_zero() {
        let budgets = budgets(PER_MINUTE);
        let store = MemoryStore::default();
        let key = window_key("m", 60, "alice");
        assert!(store.set(&key, b"not a number", 0));
        let Outcome::Reserved(reservation, _) = budgets.reserve(&alice(), None, 10, &store, 0)
        else {
            panic!("reserved");
        };
        assert!(store.set(&key, b"3", 0));
        budgets.settle(&reservation, 0, &store, 1);
        assert_eq!(decode(store.get(&key).0.as_deref()), 0);
    }
}
