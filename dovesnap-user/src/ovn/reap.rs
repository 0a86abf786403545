//! When a chassis gone from the southbound database loses its logical ports.
//!
//! A host removed from OVN (its chassis deleted after it died) leaves logical ports and
//! a reference on each switch it had; the other hosts' plugins remove them. One look
//! that misses a chassis is not enough: the southbound database answers without it
//! while ovn-controller re-registers after a restart, or briefly after a failover.
//! [`MissingChassis`] remembers since when each chassis has been missing, as seen by
//! this daemon, and names those missing for at least the grace period
//! (`dovesnap daemon --ovn-reap-after`). It forgets a chassis as soon as it is seen
//! registered again. A daemon that starts afresh starts counting afresh, so a restart
//! never reaps earlier.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The default grace period: a restarting ovn-controller re-registers within seconds.
pub const DEFAULT_REAP_AFTER: Duration = Duration::from_secs(300);

/// Since when each chassis has been seen missing from the southbound database.
#[derive(Debug)]
pub struct MissingChassis {
    grace: Duration,
    since: HashMap<String, Instant>,
}

impl Default for MissingChassis {
    fn default() -> Self {
        MissingChassis::new(DEFAULT_REAP_AFTER)
    }
}

impl MissingChassis {
    pub fn new(grace: Duration) -> Self {
        MissingChassis {
            grace,
            since: HashMap::new(),
        }
    }

    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// One look at the southbound database at `now`: `live` are the chassis registered
    /// there, `referenced` those a switch names (references and ports). Returns the
    /// chassis of `referenced` that every look since at least `grace` ago has missed
    /// (with a zero grace, all missing ones at once), sorted.
    pub fn expired(&mut self, now: Instant, live: &[String], referenced: &[String]) -> Vec<String> {
        self.since.retain(|c, _| !live.contains(c));
        let mut out: Vec<String> = referenced
            .iter()
            .filter(|c| !live.contains(c))
            .filter(|c| {
                let since = *self.since.entry((*c).clone()).or_insert(now);
                now.saturating_duration_since(since) >= self.grace
            })
            .cloned()
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The chassis being watched and since when they are missing.
    pub fn watched(&self) -> impl Iterator<Item = (&str, Instant)> {
        self.since.iter().map(|(c, t)| (c.as_str(), *t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn a_chassis_missing_for_less_than_the_grace_keeps_its_ports() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(60);
        let mut m = MissingChassis::new(grace);
        let refs = s(&["a", "b", "c"]);
        // b misses one look, then is back: its clock starts over.
        assert!(m.expired(t0, &s(&["a", "c"]), &refs).is_empty());
        assert!(m
            .expired(t0 + grace / 2, &s(&["a", "b", "c"]), &refs)
            .is_empty());
        assert!(m
            .expired(t0 + grace + Duration::from_secs(1), &s(&["a", "c"]), &refs)
            .is_empty());
        // c goes for good: reaped once a whole grace period has passed since the first
        // look that missed it, not before.
        let t1 = t0 + grace * 2;
        let live = s(&["a", "b"]);
        assert!(m.expired(t1, &live, &refs).is_empty());
        assert!(m.expired(t1 + grace / 2, &live, &refs).is_empty());
        assert_eq!(m.expired(t1 + grace, &live, &refs), ["c"]);
    }

    #[test]
    fn zero_grace_reaps_at_the_first_look_and_live_ones_never() {
        let mut m = MissingChassis::new(Duration::ZERO);
        let now = Instant::now();
        assert_eq!(m.expired(now, &s(&["a"]), &s(&["a", "b", "b"])), ["b"]);
        assert!(m.expired(now, &s(&["a", "b"]), &s(&["a", "b"])).is_empty());
        assert_eq!(m.watched().count(), 0);
    }

    #[test]
    fn the_clock_is_per_chassis_and_shared_by_switches() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(10);
        let mut m = MissingChassis::new(grace);
        // Switch 1 names x; x is first missed there.
        assert!(m.expired(t0, &s(&["me"]), &s(&["me", "x"])).is_empty());
        // Switch 2 names x and y later: x's clock runs from t0, y's from now.
        let t1 = t0 + grace;
        assert_eq!(m.expired(t1, &s(&["me"]), &s(&["x", "y"])), ["x"]);
        assert_eq!(
            m.expired(t1 + grace, &s(&["me"]), &s(&["x", "y"])),
            ["x", "y"]
        );
    }
}
