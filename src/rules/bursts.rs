//! The compiled burst and budget controls of a rule: `delay:`, `debounce:`
//! and `limit:` (with the shared `limits:` they may name).
//!
//! Plain values made by `config::compile`; `ingest` renders their keys for
//! each event and hands the store what it must decide in the event's commit.

use std::sync::Arc;
use std::time::Duration;

use crate::template::Template;

/// `debounce:` events of a rule with equal rendered `key` less than `quiet`
/// apart are one burst, run once on the newest event, at most `max_wait`
/// after the first.
#[derive(Debug, Clone)]
pub struct Debounce {
    pub key: Template,
    pub quiet: Duration,
    pub max_wait: Duration,
}

/// `rate: N/unit`: at most `count` per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
}

impl Rate {
    /// Parses `N/s`, `N/m`, `N/h` or `N/d` (N ≥ 1).
    ///
    /// # Errors
    /// What is wrong with the text, for a diagnostic.
    pub fn parse(text: &str) -> Result<Rate, String> {
        let bad = || format!("invalid rate {text:?}: write N/s, N/m, N/h or N/d, e.g. 20/m");
        let (n, unit) = text.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 {
            return Err(format!(
                "invalid rate {text:?}: the count must be at least 1"
            ));
        }
        let secs = match unit.trim() {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => return Err(bad()),
        };
        Ok(Rate {
            count,
            per: Duration::from_secs(secs),
        })
    }

    /// The window in ms.
    pub fn window_ms(self) -> u64 {
        u64::try_from(self.per.as_millis()).unwrap_or(u64::MAX)
    }
}

/// What happens to a rule's event when its limit's window is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    /// Its deliveries are recorded `dropped`, in the event's commit.
    Drop,
    /// Its deliveries wait until the budget allows.
    Delay,
}

/// The words `over:` accepts.
pub const OVER: &[&str] = &["drop", "delay"];

/// One limit a rule counts against: a named one from `limits:` (shared by
/// every rule naming it) or one written inline in the rule.
#[derive(Debug, Clone)]
pub struct Limit {
    /// The store's name for its counters: `n:<name>` for a named limit,
    /// `r:<rule>:<index>` for an inline one.
    pub id: String,
    /// The name in `limits:`, for a named limit: a 429 with `Retry-After`
    /// pauses every delivery under it.
    pub name: Option<String>,
    /// Counted per rendered key; `None`: one count for everything.
    pub key: Option<Template>,
    pub rate: Rate,
    pub over: Over,
}

/// A rule's controls; `None` on the rule when it has none, so plain rules
/// cost nothing.
#[derive(Debug, Clone, Default)]
pub struct Controls {
    /// Deliveries are due this long after the event was accepted.
    pub delay: Option<Duration>,
    pub debounce: Option<Debounce>,
    pub limits: Vec<Arc<Limit>>,
}

impl Controls {
    /// Whether every delivery can start at once when admitted: no delay,
    /// no debounce and no `over: delay` limit. Only then may ingest hand
    /// them straight to the workers.
    pub fn immediate(&self) -> bool {
        self.delay.is_none()
            && self.debounce.is_none()
            && self.limits.iter().all(|l| l.over == Over::Drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!(
            Rate::parse("20/m"),
            Ok(Rate {
                count: 20,
                per: Duration::from_secs(60)
            })
        );
        assert_eq!(Rate::parse(" 5/h ").map(|r| r.window_ms()), Ok(3_600_000));
        assert_eq!(Rate::parse("2/s").map(|r| r.count), Ok(2));
        assert_eq!(Rate::parse("1/d").map(|r| r.window_ms()), Ok(86_400_000));
        for bad in ["", "5", "5/w", "0/s", "-1/s", "x/m", "5/", "/m"] {
            assert!(Rate::parse(bad).is_err(), "{bad:?} parsed");
        }
    }
}
