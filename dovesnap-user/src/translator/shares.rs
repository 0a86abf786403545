//! The translator's port range split among workers: worker `i` of `W` owns share `i`,
//! a contiguous run of ports disjoint from every other worker's, so `W` independent
//! translators (one per worker thread, each over its own share) never hand out the same
//! external port and need no lock between them.
//!
//! Shares are as equal as the range allows: with `n` ports, the first `n % W` shares
//! hold `n / W + 1` ports and the rest `n / W`, in ascending order. The owner of a port
//! is arithmetic ([`PortShares::owner`]: two divisions, no table), so a kernel program
//! can steer a reply to its worker from the destination port alone.
//!
//! [`Config::split`] turns one translator configuration into `W` worker configurations
//! (ports and limits divided); [`super::Translator::for_workers`] makes the translators.

use std::ops::RangeInclusive;

use super::Config;

/// Why a port range cannot be split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShareError {
    #[error("the translator needs at least one worker; give 1 or more")]
    NoWorkers,
    #[error("the translator's port range is empty: there is nothing to split among workers")]
    EmptyRange,
    #[error(
        "cannot split the translator's {ports} ports ({first}-{last}) among {workers} \
         workers: each worker needs at least one port of its own; run at most {ports} \
         workers, or give the translator more ports (--nat-ports less --nat-kernel-ports)"
    )]
    TooManyWorkers {
        workers: usize,
        ports: u32,
        first: u16,
        last: u16,
    },
    #[error("there is no worker {worker}: the range is split among {workers} (0 to {})", workers - 1)]
    NoSuchWorker { worker: usize, workers: usize },
}

/// A port range split into `workers` disjoint, contiguous shares covering all of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortShares {
    first: u16,
    /// Ports in the range, 1 to 65536.
    len: u32,
    /// 1 to `len`.
    workers: u32,
}

impl PortShares {
    /// Splits `ports` among `workers` (at least one, at most one per port).
    pub fn new(ports: &RangeInclusive<u16>, workers: usize) -> Result<Self, ShareError> {
        if workers == 0 {
            return Err(ShareError::NoWorkers);
        }
        if ports.is_empty() {
            return Err(ShareError::EmptyRange);
        }
        let len = u32::from(*ports.end()) - u32::from(*ports.start()) + 1;
        match u32::try_from(workers) {
            Ok(w) if w <= len => Ok(PortShares {
                first: *ports.start(),
                len,
                workers: w,
            }),
            _ => Err(ShareError::TooManyWorkers {
                workers,
                ports: len,
                first: *ports.start(),
                last: *ports.end(),
            }),
        }
    }

    pub fn workers(&self) -> usize {
        self.workers as usize
    }

    /// The whole range.
    pub fn range(&self) -> RangeInclusive<u16> {
        self.first..=self.port_at(self.len - 1)
    }

    /// Ports in the whole range.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Never true: a split range holds at least one port.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Ports of the smaller shares, and how many shares hold one more.
    fn base_and_longer(&self) -> (u32, u32) {
        (self.len / self.workers, self.len % self.workers)
    }

    fn port_at(&self, offset: u32) -> u16 {
        // The offset is below `len`, so the port is at most the range's last.
        (u32::from(self.first) + offset) as u16
    }

    /// Worker `worker`'s share.
    pub fn share(&self, worker: usize) -> Result<RangeInclusive<u16>, ShareError> {
        let i = u32::try_from(worker)
            .ok()
            .filter(|i| *i < self.workers)
            .ok_or(ShareError::NoSuchWorker {
                worker,
                workers: self.workers(),
            })?;
        let (base, longer) = self.base_and_longer();
        let start = i * base + i.min(longer);
        let size = base + u32::from(i < longer);
        Ok(self.port_at(start)..=self.port_at(start + size - 1))
    }

    /// Every share, worker 0's first.
    pub fn iter(&self) -> impl Iterator<Item = RangeInclusive<u16>> + '_ {
        (0..self.workers()).map(|i| self.share(i).expect("a worker of the split"))
    }

    /// The worker whose share holds `port`; `None` outside the range.
    pub fn owner(&self, port: u16) -> Option<usize> {
        let off = u32::from(port).checked_sub(u32::from(self.first))?;
        if off >= self.len {
            return None;
        }
        let (base, longer) = self.base_and_longer();
        let in_longer = longer * (base + 1);
        let i = if off < in_longer {
            off / (base + 1)
        } else {
            longer + (off - in_longer) / base
        };
        Some(i as usize)
    }
}

/// [`PortShares::new`]'s shares as a list.
pub fn split_ports(
    ports: &RangeInclusive<u16>,
    workers: usize,
) -> Result<Vec<RangeInclusive<u16>>, ShareError> {
    let shares = PortShares::new(ports, workers)?;
    Ok(shares.iter().collect())
}

/// `total * part / whole`, rounded up, at least 1.
fn scaled(total: usize, part: usize, whole: usize) -> usize {
    let v = (total as u128 * part as u128).div_ceil(whole.max(1) as u128);
    usize::try_from(v).unwrap_or(usize::MAX).max(1)
}

impl Config {
    /// The configurations of `workers` translators sharing this one's work: worker `i`
    /// gets share `i` of [`Config::ports`] ([`PortShares`]) and its part of the limits,
    /// rounded up (so the parts add up to at least the whole, and no part is 0):
    /// `max_sessions` divided by the number of workers; `max_ports_per_endpoint` in
    /// proportion to the share's size (a container keeps the same fraction of its
    /// worker's ports as it had of the whole range). A container's sessions all live on
    /// one worker (its endpoint's, see docs/design/nat-fast-tc.md step 5), so
    /// `max_sessions_per_endpoint` stays as it is, within the worker's `max_sessions`.
    /// `workers == 1` gives this configuration back unchanged.
    pub fn split(&self, workers: usize) -> Result<Vec<Config>, ShareError> {
        let shares = PortShares::new(&self.ports, workers)?;
        let whole = shares.len() as usize;
        Ok(shares
            .iter()
            .map(|ports| {
                let n = ports.len();
                let max_sessions = scaled(self.max_sessions, 1, workers);
                Config {
                    max_sessions,
                    max_sessions_per_endpoint: self
                        .max_sessions_per_endpoint
                        .map(|m| m.min(max_sessions)),
                    max_ports_per_endpoint: self
                        .max_ports_per_endpoint
                        .map(|m| scaled(m, n, whole).min(n)),
                    ports,
                    ..self.clone()
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translator::Timeouts;
    use std::net::Ipv4Addr;

    fn len(r: &RangeInclusive<u16>) -> u32 {
        u32::from(*r.end()) - u32::from(*r.start()) + 1
    }

    /// Shares in order, each right after the last, together exactly `range`, sizes
    /// differing by at most one, and `owner` agreeing with them at every port.
    fn check(range: RangeInclusive<u16>, workers: usize) {
        let shares = PortShares::new(&range, workers).unwrap();
        let list = split_ports(&range, workers).unwrap();
        assert_eq!(list.len(), workers);
        assert_eq!(shares.range(), range);
        let mut next = u32::from(*range.start());
        for (i, s) in list.iter().enumerate() {
            assert!(!s.is_empty(), "{range:?}/{workers}: share {i} empty");
            assert_eq!(
                u32::from(*s.start()),
                next,
                "{range:?}/{workers}: gap or overlap"
            );
            next = u32::from(*s.end()) + 1;
            for p in [*s.start(), *s.end(), s.start() + (s.end() - s.start()) / 2] {
                assert_eq!(shares.owner(p), Some(i), "{range:?}/{workers}: port {p}");
            }
        }
        assert_eq!(
            next,
            u32::from(*range.end()) + 1,
            "{range:?}/{workers}: not covered"
        );
        let sizes: Vec<u32> = list.iter().map(len).collect();
        let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
        assert!(hi - lo <= 1, "{range:?}/{workers}: sizes {sizes:?}");
        assert_eq!(sizes.iter().sum::<u32>(), shares.len());
        if *range.start() > 0 {
            assert_eq!(shares.owner(range.start() - 1), None);
        }
        if *range.end() < u16::MAX {
            assert_eq!(shares.owner(range.end() + 1), None);
        }
    }

    #[test]
    fn shares_are_disjoint_and_cover_the_range() {
        for workers in 1..=9 {
            check(1024..=16383, workers);
            check(1024..=32767, workers);
            check(40000..=40099, workers);
        }
        // Odd sizes, one port per worker, the whole u16 space.
        check(1000..=1006, 3);
        check(1000..=1006, 7);
        check(5..=5, 1);
        check(0..=65535, 3);
        check(65530..=65535, 4);
        // Every port of a small odd range, against a plain scan.
        let s = PortShares::new(&(100..=110), 4).unwrap();
        let owners: Vec<usize> = (100..=110).map(|p| s.owner(p).unwrap()).collect();
        assert_eq!(owners, [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3]);
    }

    #[test]
    fn one_worker_owns_everything() {
        let s = PortShares::new(&(1024..=16383), 1).unwrap();
        assert_eq!(s.share(0).unwrap(), 1024..=16383);
        assert_eq!(split_ports(&(1024..=16383), 1).unwrap(), [1024..=16383]);
        assert_eq!(s.owner(1024), Some(0));
        assert_eq!(s.owner(16383), Some(0));
        assert_eq!(s.owner(16384), None);
    }

    #[test]
    fn impossible_splits_are_refused_clearly() {
        let e = PortShares::new(&(1000..=1003), 5).unwrap_err();
        assert_eq!(
            e,
            ShareError::TooManyWorkers {
                workers: 5,
                ports: 4,
                first: 1000,
                last: 1003
            }
        );
        let msg = e.to_string();
        assert!(
            msg.contains("4 ports (1000-1003) among 5 workers") && msg.contains("at most 4"),
            "{msg}"
        );
        assert_eq!(
            PortShares::new(&(1000..=1003), 0),
            Err(ShareError::NoWorkers)
        );
        #[allow(clippy::reversed_empty_ranges)]
        let empty = 10..=9;
        assert_eq!(PortShares::new(&empty, 1), Err(ShareError::EmptyRange));
        assert!(PortShares::new(&(0..=65535), usize::MAX).is_err());
        let s = PortShares::new(&(1000..=1003), 2).unwrap();
        let e = s.share(2).unwrap_err();
        assert_eq!(
            e.to_string(),
            "there is no worker 2: the range is split among 2 (0 to 1)"
        );
    }

    fn config() -> Config {
        Config {
            external_ip: Ipv4Addr::new(192, 0, 2, 1),
            uplink_mac: [2, 0, 0, 0, 0, 1],
            ports: 1024..=16383,
            max_sessions: 65536,
            max_sessions_per_endpoint: Some(1000),
            max_ports_per_endpoint: Some(11520),
            timeouts: Timeouts::default(),
        }
    }

    #[test]
    fn a_config_splits_into_worker_configs() {
        let c = config();
        assert_eq!(
            c.split(1).unwrap(),
            std::slice::from_ref(&c),
            "one worker: unchanged"
        );
        let parts = c.split(3).unwrap();
        assert_eq!(parts.len(), 3);
        let shares: Vec<_> = parts.iter().map(|p| p.ports.clone()).collect();
        assert_eq!(shares, split_ports(&c.ports, 3).unwrap());
        for p in &parts {
            assert_eq!(p.external_ip, c.external_ip);
            assert_eq!(p.timeouts, c.timeouts);
            assert_eq!(p.max_sessions, 21846);
            assert_eq!(p.max_sessions_per_endpoint, Some(1000));
            // 11520 of 15360 ports: 3/4 of each 5120-port share.
            assert_eq!(p.max_ports_per_endpoint, Some(3840));
        }
        // Parts never drop to 0, a container's limit stays within its worker's table,
        // and a port share never exceeds its share.
        let tiny = Config {
            ports: 1000..=1002,
            max_sessions: 4,
            max_sessions_per_endpoint: Some(3),
            max_ports_per_endpoint: Some(3),
            ..c.clone()
        };
        for p in tiny.split(3).unwrap() {
            assert_eq!(p.ports.len(), 1);
            assert_eq!((p.max_sessions, p.max_sessions_per_endpoint), (2, Some(2)));
            assert_eq!(p.max_ports_per_endpoint, Some(1));
        }
        assert!(tiny.split(4).is_err());
    }
}
