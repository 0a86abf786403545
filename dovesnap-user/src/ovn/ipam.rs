//! Address claims in the OVN northbound database, for dovesnap's IPAM
//! (`--ipam-driver ovs`, [`crate::plugin::ipam`]): the hosts of an overlay network
//! share one pool per subnet, so the same `docker network create` works on every host
//! and two hosts never hand out the same address.
//!
//! A pool is one `Address_Set` row (it exists before the logical switch does: Docker
//! asks its IPAM before `CreateNetwork`), named `dovesnap_pool_<subnet>`; everything is
//! in its `external_ids`:
//! - `dovesnap-subnet`: the subnet;
//! - `dovesnap-user-<token>` = chassis: one per `RequestPool` (a network on a host);
//!   `ReleasePool` removes it, and the last one out deletes the row;
//! - `dovesnap-ip-<address>` = `<chassis> <token>` for a container's address, or
//!   `gateway` for the gateway address that every host asks for and shares.
//!
//! A claim is a map `insert` (which leaves an existing key alone) followed by a `wait`
//! that the key now holds this claim's own value: if another host claimed the address
//! first, the transaction fails and the claim is retried on what is read again. Claims
//! of different addresses never conflict, so hosts allocating at once rarely retry.
//! The claims and users of a chassis reaped from OVN (see [`super::reap`]) go with its
//! ports.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::net::Ipv4Addr;

use serde_json::{json, Value};

use crate::host::addr::Ipv4Net;
use crate::ovsdb::{self, Row, Txn};

use super::northbound::{string_map, Northbound, DB};
use super::OvnError;

const AS: &str = "Address_Set";
/// Name prefix of the pools' `Address_Set` rows.
pub const POOL_PREFIX: &str = "dovesnap_pool_";
const EXT_SUBNET: &str = "dovesnap-subnet";
const EXT_USER: &str = "dovesnap-user-";
const EXT_IP: &str = "dovesnap-ip-";
/// The value of the gateway's claim.
pub const GATEWAY: &str = "gateway";
/// Claims retried after losing a race: each retry reads again and picks a free
/// address at random, so a few suffice even with many hosts allocating at once.
const RETRIES: usize = 20;

/// The `Address_Set` of the pool of `subnet` (`dovesnap_pool_10_30_0_0_24`: a name
/// OVN's ACL expressions accept).
pub fn pool_name(subnet: Ipv4Net) -> String {
    format!(
        "{POOL_PREFIX}{}_{}",
        subnet.addr().to_string().replace('.', "_"),
        subnet.prefix()
    )
}

/// A fresh token (a `RequestPool`'s, a claim's): random enough to tell the requests of
/// one host apart.
pub fn token() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    format!("{:016x}", h.finish())
}

/// A pool as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub uuid: String,
    pub name: String,
    pub external_ids: BTreeMap<String, String>,
}

/// Who holds an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    Gateway,
    Chassis(String),
}

impl Pool {
    /// The claimed addresses and who holds them.
    pub fn claims(&self) -> BTreeMap<Ipv4Addr, Holder> {
        self.external_ids
            .iter()
            .filter_map(|(k, v)| {
                let ip = k.strip_prefix(EXT_IP)?.parse().ok()?;
                let holder = match v.as_str() {
                    GATEWAY => Holder::Gateway,
                    v => Holder::Chassis(v.split_whitespace().next().unwrap_or("").into()),
                };
                Some((ip, holder))
            })
            .collect()
    }

    /// The chassis of each `RequestPool` still using the pool.
    pub fn users(&self) -> Vec<&str> {
        self.external_ids
            .iter()
            .filter(|(k, _)| k.starts_with(EXT_USER))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Whether nothing but the gateway holds the pool: then it can go.
    fn unused(&self) -> bool {
        self.users().is_empty() && self.claims().values().all(|h| *h == Holder::Gateway)
    }
}

fn ip_key(ip: Ipv4Addr) -> String {
    format!("{EXT_IP}{ip}")
}

fn user_key(token: &str) -> String {
    format!("{EXT_USER}{token}")
}

fn this(uuid: &str) -> Vec<Value> {
    vec![ovsdb::eq("_uuid", json!(["uuid", uuid]))]
}

fn query(name: &str) -> Txn {
    let mut txn = Txn::on(DB);
    txn.select(
        AS,
        vec![ovsdb::eq("name", name)],
        &["_uuid", "name", "external_ids"],
    );
    txn
}

fn parse_pools(rows: &[Value]) -> Result<Vec<Pool>, OvnError> {
    rows.iter()
        .map(|r| {
            let row = Row::new(AS, r)?;
            Ok(Pool {
                uuid: row.uuid("_uuid")?.to_string(),
                name: row.string("name")?.to_string(),
                external_ids: row.string_map("external_ids")?,
            })
        })
        .collect()
}

/// Creates the pool with its first user, unless a pool of that name exists (op 0
/// fails then: another host made it first).
fn create_pool(subnet: Ipv4Net, chassis: &str, token: &str) -> Txn {
    let name = pool_name(subnet);
    let mut txn = Txn::on(DB);
    txn.require(AS, vec![ovsdb::eq("name", name.as_str())], false);
    txn.insert(
        AS,
        json!({"name": name, "external_ids": string_map([
            (EXT_SUBNET.to_string(), subnet.to_string()), (user_key(token), chassis.to_string())])}),
        "pool",
    );
    txn.comment(&format!("dovesnap: {chassis} creates address pool {name}"));
    txn
}

fn add_user(pool: &Pool, chassis: &str, token: &str) -> Txn {
    let mut txn = Txn::on(DB);
    txn.mutate(
        AS,
        this(&pool.uuid),
        vec![json!([
            "external_ids",
            "insert",
            string_map([(user_key(token).as_str(), chassis)])
        ])],
    );
    txn
}

/// Claims `ip` for `value` (`"<chassis> <token>"` or [`GATEWAY`]): the insert leaves
/// another claim of the address alone, and the `wait` (op 1) then fails the whole
/// transaction unless the key holds `value`.
fn claim(pool: &Pool, ip: Ipv4Addr, value: &str) -> Txn {
    let key = ip_key(ip);
    let mut txn = Txn::on(DB);
    txn.mutate(
        AS,
        this(&pool.uuid),
        vec![json!([
            "external_ids",
            "insert",
            string_map([(&key, value)])
        ])],
    );
    txn.push_raw(json!({
        "op": "wait", "table": AS, "timeout": 0,
        "where": [["_uuid", "==", ["uuid", pool.uuid]],
                  ["external_ids", "includes", string_map([(&key, value)])]],
        "columns": ["name"], "until": "==", "rows": [{"name": pool.name}],
    }));
    txn
}

/// Removes the pairs `pairs` (key and value both must match: a claim made again by
/// someone else in between stays).
fn remove_pairs(pool: &Pool, pairs: &[(String, String)]) -> Txn {
    let mut txn = Txn::on(DB);
    txn.mutate(
        AS,
        this(&pool.uuid),
        vec![json!([
            "external_ids",
            "delete",
            string_map(pairs.iter().map(|(k, v)| (k, v)))
        ])],
    );
    txn
}

/// Deletes the pool, guarded on its `external_ids` as read (op 0 fails when another
/// host took or claimed meanwhile).
fn delete_pool(pool: &Pool) -> Txn {
    let mut txn = Txn::on(DB);
    txn.push_raw(json!({
        "op": "wait", "table": AS, "timeout": 0, "where": this(&pool.uuid),
        "columns": ["external_ids"], "until": "==",
        "rows": [{"external_ids": string_map(&pool.external_ids)}],
    }));
    txn.delete(AS, this(&pool.uuid));
    txn.comment(&format!(
        "dovesnap: the last user deletes address pool {}",
        pool.name
    ));
    txn
}

/// The address to try: `attempt` 0 takes the lowest free one (as Docker's own IPAM
/// does), later attempts a free one at random (someone else just took the lowest).
pub fn pick(
    free: std::ops::RangeInclusive<u32>,
    taken: &BTreeMap<Ipv4Addr, Holder>,
    attempt: usize,
    random: u64,
) -> Option<Ipv4Addr> {
    let (first, last) = (*free.start(), *free.end());
    if first > last {
        return None;
    }
    let size = u64::from(last - first) + 1;
    let start = if attempt == 0 { 0 } else { random % size };
    (0..size)
        .map(|i| first + ((start + i) % size) as u32)
        .map(Ipv4Addr::from)
        .find(|ip| !taken.contains_key(ip))
}

/// What a claim wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// The network's gateway: `preferred` (`--gateway`), else the subnet's first host
    /// address; the same on every host, shared.
    Gateway(Option<Ipv4Addr>),
    /// This address (`--ip`), refused when held.
    Exactly(Ipv4Addr),
    /// Any free address of the range.
    Any,
}

impl Northbound {
    pub async fn pool(&self, subnet: Ipv4Net) -> Result<Option<Pool>, OvnError> {
        let name = pool_name(subnet);
        let results = self.commit("read the address pools", &query(&name)).await?;
        let mut pools = parse_pools(ovsdb::rows(&results, 0)?)?;
        if pools.len() > 1 {
            return Err(OvnError::DuplicatePool(name));
        }
        Ok(pools.pop())
    }

    /// Takes the pool of `subnet` for one network of `chassis` (creating it if no host
    /// has it yet), under `token`.
    pub async fn request_pool(
        &self,
        subnet: Ipv4Net,
        chassis: &str,
        token: &str,
    ) -> Result<(), OvnError> {
        let what = format!("take address pool {}", pool_name(subnet));
        for _ in 0..RETRIES {
            match self.pool(subnet).await? {
                None => match self.transact(&create_pool(subnet, chassis, token)).await? {
                    Ok(_) => return Ok(()),
                    Err(r) if r.op == Some(0) => continue,
                    Err(r) => return Err(super::northbound::refused(what, r)),
                },
                Some(pool) => {
                    self.commit(&what, &add_user(&pool, chassis, token)).await?;
                    return Ok(());
                }
            }
        }
        Err(OvnError::Contended(what))
    }

    /// Drops the `RequestPool` of `token`; the pool goes when no user is left and no
    /// container holds an address.
    pub async fn release_pool(&self, subnet: Ipv4Net, token: &str) -> Result<(), OvnError> {
        let what = format!("release address pool {}", pool_name(subnet));
        for _ in 0..RETRIES {
            let Some(mut pool) = self.pool(subnet).await? else {
                return Ok(());
            };
            let key = user_key(token);
            if let Some(v) = pool.external_ids.get(&key).cloned() {
                self.commit(&what, &remove_pairs(&pool, &[(key.clone(), v)]))
                    .await?;
                pool.external_ids.remove(&key);
            }
            if !pool.unused() {
                return Ok(());
            }
            match self.transact(&delete_pool(&pool)).await? {
                Ok(_) => return Ok(()),
                Err(r) if r.op == Some(0) => continue,
                Err(r) => return Err(super::northbound::refused(what, r)),
            }
        }
        Err(OvnError::Contended(what))
    }

    /// Claims an address of the pool of `subnet` for `chassis`; `free` are the
    /// addresses it may hand out (the subnet's hosts, or `--ip-range`'s).
    pub async fn claim_address(
        &self,
        subnet: Ipv4Net,
        free: std::ops::RangeInclusive<u32>,
        want: Want,
        chassis: &str,
    ) -> Result<Ipv4Addr, OvnError> {
        let name = pool_name(subnet);
        let what = format!("claim an address of pool {name}");
        let value = match want {
            Want::Gateway(_) => GATEWAY.to_string(),
            _ => format!("{chassis} {}", token()),
        };
        for attempt in 0..RETRIES {
            let pool = self
                .pool(subnet)
                .await?
                .ok_or_else(|| OvnError::NoPool(name.clone()))?;
            let claims = pool.claims();
            let ip = match want {
                Want::Gateway(preferred) => {
                    let ip = preferred.unwrap_or(Ipv4Addr::from(u32::from(subnet.addr()) + 1));
                    match claims.get(&ip) {
                        None | Some(Holder::Gateway) => ip,
                        Some(Holder::Chassis(c)) => {
                            return Err(in_use(ip, &name, c));
                        }
                    }
                }
                Want::Exactly(ip) => match claims.get(&ip) {
                    None => ip,
                    Some(Holder::Gateway) => return Err(in_use(ip, &name, "the gateway")),
                    Some(Holder::Chassis(c)) => return Err(in_use(ip, &name, c)),
                },
                Want::Any => {
                    pick(free.clone(), &claims, attempt, token_u64()).ok_or_else(|| {
                        OvnError::PoolExhausted {
                            pool: name.clone(),
                            claimed: claims.len(),
                        }
                    })?
                }
            };
            match self.transact(&claim(&pool, ip, &value)).await? {
                Ok(_) => return Ok(ip),
                Err(r) if r.op == Some(1) => continue,
                Err(r) => return Err(super::northbound::refused(what, r)),
            }
        }
        Err(OvnError::Contended(what))
    }

    /// Releases `ip` if `chassis` holds it (the gateway stays while the pool does: the
    /// other hosts share it).
    pub async fn release_address(
        &self,
        subnet: Ipv4Net,
        ip: Ipv4Addr,
        chassis: &str,
    ) -> Result<(), OvnError> {
        let Some(pool) = self.pool(subnet).await? else {
            return Ok(());
        };
        let key = ip_key(ip);
        let Some(value) = pool.external_ids.get(&key) else {
            return Ok(());
        };
        if pool.claims().get(&ip) != Some(&Holder::Chassis(chassis.to_string())) {
            return Ok(());
        }
        let what = format!("release {ip} in pool {}", pool.name);
        self.commit(&what, &remove_pairs(&pool, &[(key, value.clone())]))
            .await
            .map(drop)
    }

    /// Removes the claims and pool users of the chassis in `dead` from every pool
    /// (reaping, see [`super::reap`]); a pool left unused goes. Returns how many
    /// addresses were freed.
    pub async fn reap_pools(&self, dead: &[String]) -> Result<usize, OvnError> {
        let mut txn = Txn::on(DB);
        txn.select(AS, vec![], &["_uuid", "name", "external_ids"]);
        let results = self.commit("read the address pools", &txn).await?;
        let pools = parse_pools(ovsdb::rows(&results, 0)?)?;
        let mut freed = 0;
        for mut pool in pools
            .into_iter()
            .filter(|p| p.name.starts_with(POOL_PREFIX))
        {
            let pairs = dead_pairs(&pool, dead);
            if pairs.is_empty() {
                continue;
            }
            freed += pairs.iter().filter(|(k, _)| k.starts_with(EXT_IP)).count();
            let what = format!("reap dead chassis in pool {}", pool.name);
            self.commit(&what, &remove_pairs(&pool, &pairs)).await?;
            for (k, _) in &pairs {
                pool.external_ids.remove(k);
            }
            if pool.unused() {
                // Lost to a host that took the pool meanwhile: it stays, rightly.
                let _ = self.transact(&delete_pool(&pool)).await?;
            }
        }
        Ok(freed)
    }
}

/// The pool's users and claims that belong to the chassis in `dead`.
fn dead_pairs(pool: &Pool, dead: &[String]) -> Vec<(String, String)> {
    pool.external_ids
        .iter()
        .filter(|(k, v)| {
            (k.starts_with(EXT_USER) || k.starts_with(EXT_IP))
                && v.split_whitespace()
                    .next()
                    .is_some_and(|c| dead.iter().any(|d| d == c))
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn token_u64() -> u64 {
    u64::from_str_radix(&token(), 16).unwrap_or(0)
}

fn in_use(ip: Ipv4Addr, pool: &str, holder: &str) -> OvnError {
    OvnError::Claimed {
        ip,
        pool: pool.to_string(),
        holder: holder.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(ids: &[(&str, &str)]) -> Pool {
        Pool {
            uuid: "as-1".into(),
            name: "dovesnap_pool_10_32_0_0_24".into(),
            external_ids: ids
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn names_and_tokens() {
        let s: Ipv4Net = "10.32.0.0/24".parse().unwrap();
        assert_eq!(pool_name(s), "dovesnap_pool_10_32_0_0_24");
        assert_ne!(token(), token());
        assert_eq!(token().len(), 16);
    }

    #[test]
    fn creates_a_pool_only_if_none_has_the_name() {
        let p = create_pool("10.32.0.0/24".parse().unwrap(), "h1", "t1").params();
        assert_eq!(p[1]["op"], "wait");
        assert_eq!(
            p[1]["where"],
            json!([["name", "==", "dovesnap_pool_10_32_0_0_24"]])
        );
        assert_eq!(p[1]["rows"], json!([]));
        assert_eq!(
            p[2]["row"]["external_ids"],
            json!([
                "map",
                [
                    ["dovesnap-subnet", "10.32.0.0/24"],
                    ["dovesnap-user-t1", "h1"]
                ]
            ])
        );
        let p = add_user(&pool(&[]), "h2", "t2").params();
        assert_eq!(
            p[1]["mutations"],
            json!([[
                "external_ids",
                "insert",
                ["map", [["dovesnap-user-t2", "h2"]]]
            ]])
        );
    }

    #[test]
    fn a_claim_fails_unless_the_address_holds_its_own_value() {
        let p = claim(&pool(&[]), Ipv4Addr::new(10, 32, 0, 5), "h1 abc").params();
        assert_eq!(
            p[1]["mutations"],
            json!([[
                "external_ids",
                "insert",
                ["map", [["dovesnap-ip-10.32.0.5", "h1 abc"]]]
            ]])
        );
        assert_eq!(p[2]["op"], "wait");
        assert_eq!(
            p[2]["where"][1],
            json!([
                "external_ids",
                "includes",
                ["map", [["dovesnap-ip-10.32.0.5", "h1 abc"]]]
            ])
        );
        assert_eq!(
            p[2]["rows"],
            json!([{"name": "dovesnap_pool_10_32_0_0_24"}])
        );
    }

    #[test]
    fn reads_claims_users_and_what_is_unused() {
        let p = pool(&[
            ("dovesnap-subnet", "10.32.0.0/24"),
            ("dovesnap-user-t1", "h1"),
            ("dovesnap-ip-10.32.0.1", "gateway"),
            ("dovesnap-ip-10.32.0.2", "h1 abc"),
            ("dovesnap-ip-bogus", "h1 x"),
        ]);
        assert_eq!(p.users(), ["h1"]);
        let claims = p.claims();
        assert_eq!(claims.len(), 2);
        assert_eq!(claims[&Ipv4Addr::new(10, 32, 0, 1)], Holder::Gateway);
        assert_eq!(
            claims[&Ipv4Addr::new(10, 32, 0, 2)],
            Holder::Chassis("h1".into())
        );
        assert!(!p.unused());
        assert!(pool(&[("dovesnap-ip-10.32.0.1", "gateway")]).unused());
        assert!(!pool(&[("dovesnap-ip-10.32.0.9", "h2 t")]).unused());
    }

    #[test]
    fn picks_the_lowest_free_then_at_random_and_none_when_full() {
        let s: Ipv4Net = "10.32.0.0/29".parse().unwrap();
        let free = crate::plugin::ipam::hosts(s, None);
        let mut taken = BTreeMap::new();
        taken.insert(Ipv4Addr::new(10, 32, 0, 1), Holder::Gateway);
        taken.insert(Ipv4Addr::new(10, 32, 0, 2), Holder::Chassis("h".into()));
        assert_eq!(
            pick(free.clone(), &taken, 0, 99),
            Some(Ipv4Addr::new(10, 32, 0, 3))
        );
        for r in 0..20 {
            let ip = pick(free.clone(), &taken, 1, r).unwrap();
            assert!(!taken.contains_key(&ip) && s.contains(ip), "{ip}");
            assert!(ip.octets()[3] >= 1 && ip.octets()[3] <= 6, "{ip}");
        }
        for i in 3..=6 {
            taken.insert(Ipv4Addr::new(10, 32, 0, i), Holder::Chassis("h".into()));
        }
        assert_eq!(pick(free, &taken, 0, 0), None);
    }

    #[test]
    fn deletes_only_the_pool_as_read_and_reaps_only_the_dead() {
        let p = pool(&[
            ("dovesnap-user-t1", "h1"),
            ("dovesnap-user-t3", "h3"),
            ("dovesnap-ip-10.32.0.1", "gateway"),
            ("dovesnap-ip-10.32.0.2", "h1 a"),
            ("dovesnap-ip-10.32.0.3", "h3 b"),
        ]);
        let txn = delete_pool(&p).params();
        assert_eq!(txn[1]["op"], "wait");
        assert_eq!(txn[1]["columns"], json!(["external_ids"]));
        assert_eq!(txn[2]["op"], "delete");
        let pairs = dead_pairs(&p, &["h3".to_string()]);
        assert_eq!(
            pairs,
            [
                ("dovesnap-ip-10.32.0.3".to_string(), "h3 b".to_string()),
                ("dovesnap-user-t3".to_string(), "h3".to_string())
            ]
        );
        let txn = remove_pairs(&p, &pairs).params();
        assert_eq!(
            txn[1]["mutations"],
            json!([[
                "external_ids",
                "delete",
                [
                    "map",
                    [
                        ["dovesnap-ip-10.32.0.3", "h3 b"],
                        ["dovesnap-user-t3", "h3"]
                    ]
                ]
            ]])
        );
        assert!(dead_pairs(&p, &["h2".to_string()]).is_empty());
    }
}
