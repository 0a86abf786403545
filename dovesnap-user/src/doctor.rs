//! `dovesnap doctor`: checks that this host can run dovesnap and says what to fix.
//!
//! [`run`] performs one check per function below, in a fixed order, and returns a
//! [`Check`] for each: a status ([`Status::Ok`], [`Status::Warn`] or
//! [`Status::Fail`]), a one-line finding and, unless OK, what to do about it. Nothing
//! here panics or waits indefinitely when a service is missing: a refused or absent
//! socket is a finding, and every call to a live service is bounded by
//! [`SERVICE_TIMEOUT`] in case that service hangs.
//!
//! The checks only look: the one thing they create is short-lived (the XDP program is
//! loaded and unloaded without attaching it; an AF_XDP socket is bound on `lo` and
//! closed). The parsing of `/proc` files and `iptables` output, the port-range logic
//! and the rendering are pure functions, unit-tested below.

use std::io;
use std::ops::RangeInclusive;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::daemon::http::GetError;
use crate::fastpath::afxdp::{AfXdpError, Xsk, XskConfig};
use crate::fastpath::xdp::{XdpError, XdpProgram};
use crate::fastpath::TRANSLATOR_PORTS;
use crate::firewall::NftFirewall;
use crate::host::netlink::{DefaultRoute, Netlink};
use crate::host::sysctl;
use crate::ovsdb::{self, Ovsdb};
use crate::plugin::options::NAT_UPLINK;
use crate::plugin::server::DEFAULT_PLUGIN_SOCKET;

/// Where dockerd serves its API.
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// The longest a responsive-looking service may take to answer one check.
pub const SERVICE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where bpffs is conventionally mounted.
const BPFFS: &str = "/sys/fs/bpf";

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    /// Nothing to do.
    Ok,
    /// Works, with a consequence or a missing piece worth knowing about.
    Warn,
    /// dovesnap (or a mode of it) will not work until this is fixed.
    Fail,
}

impl Status {
    /// `OK`, `WARN` or `FAIL`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

/// One check's result. Serialized as `{check, status, detail, fix}` (`fix` is `null`
/// when there is nothing to do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// A short stable name, e.g. `ovsdb`.
    pub check: String,
    pub status: Status,
    /// One line: what was found.
    pub detail: String,
    /// What to do, when the status is not OK.
    pub fix: Option<String>,
}

impl Check {
    /// A passed check. Multi-line text (a tool's stderr) is joined into one line.
    pub fn ok(check: &str, detail: impl Into<String>) -> Self {
        Check {
            check: check.to_owned(),
            status: Status::Ok,
            detail: one_line(&detail.into()),
            fix: None,
        }
    }

    /// A check that passed with something worth knowing, and what to do about it.
    pub fn warn(check: &str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Check {
            status: Status::Warn,
            fix: Some(one_line(&fix.into())),
            ..Check::ok(check, detail)
        }
    }

    /// A failed check and how to fix it.
    pub fn fail(check: &str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Check {
            status: Status::Fail,
            fix: Some(one_line(&fix.into())),
            ..Check::ok(check, detail)
        }
    }
}

/// `text` on one line: its non-empty lines, trimmed, joined with ` / `.
pub fn one_line(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines.join(" / ")
}

/// What to check against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// ovsdb-server's unix socket.
    pub ovsdb: PathBuf,
    /// dockerd's API socket.
    pub docker: PathBuf,
    /// Where the daemon serves the plugin API (Docker looks for it there).
    pub plugin_socket: PathBuf,
    /// The OVN northbound database to check (default: the host's settings).
    pub ovn_nb: Option<ovsdb::Remote>,
    /// The daemon's `--nat-ports`: the translator's port range the host's own ranges
    /// must stay clear of.
    pub nat_ports: RangeInclusive<u16>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            ovsdb: PathBuf::from(ovsdb::DEFAULT_SOCKET),
            docker: PathBuf::from(DEFAULT_DOCKER_SOCKET),
            plugin_socket: PathBuf::from(DEFAULT_PLUGIN_SOCKET),
            ovn_nb: None,
            nat_ports: TRANSLATOR_PORTS,
        }
    }
}

/// Runs every check. Some calls block (loading the XDP program, running `nft` and
/// `iptables`); they are short, and doctor runs alone.
pub async fn run(opts: &Options) -> Vec<Check> {
    let mut checks = vec![check_root()];
    let ovs = connect_ovsdb(&opts.ovsdb).await;
    checks.push(match &ovs {
        Ok(_) => Check::ok(
            "ovsdb",
            format!("ovsdb-server answers at {}", opts.ovsdb.display()),
        ),
        Err(c) => c.clone(),
    });
    checks.push(check_vswitchd(&opts.ovsdb).await);
    checks.push(check_datapath(ovs.as_ref().ok()).await);
    checks.push(check_records(ovs.as_ref().ok()).await);
    checks.push(check_bpffs());
    checks.push(check_xdp());
    checks.push(check_afxdp());
    checks.push(check_docker(&opts.docker).await);
    checks.push(check_plugin_socket(&opts.plugin_socket));
    checks.push(check_nftables());
    checks.push(check_forward_policy());
    checks.push(check_ip_forward());
    checks.push(check_local_port_range(&opts.nat_ports));
    checks.push(check_reserved_ports(&opts.nat_ports));
    let route = read_default_route().await;
    checks.push(check_default_route(&route));
    let default_uplink = route
        .as_ref()
        .ok()
        .and_then(|r| r.as_ref())
        .map(|r| r.1.as_str());
    checks.extend(check_nat_fast_uplinks(ovs.as_ref().ok(), default_uplink).await);
    checks.push(check_host_rules(ovs.as_ref().ok()).await);
    checks.extend(check_ovn(ovs.as_ref().ok(), opts.ovn_nb.as_ref()).await);
    checks
}

/// Whether any check failed (doctor then exits with status 1).
pub fn has_failures(checks: &[Check]) -> bool {
    checks.iter().any(|c| c.status == Status::Fail)
}

// ---- the checks -------------------------------------------------------------------

/// dovesnap creates bridges, veths, XDP programs and firewall rules: it runs as root.
pub fn check_root() -> Check {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        Check::ok("root", "running as root")
    } else {
        Check::fail(
            "root",
            format!("running as uid {euid}, not root: most checks below need root"),
            "run `sudo dovesnap doctor` (the daemon itself must run as root too)",
        )
    }
}

/// Connects to ovsdb-server; the error is the `ovsdb` check's finding.
async fn connect_ovsdb(path: &Path) -> Result<Ovsdb, Check> {
    let fix = format!(
        "start Open vSwitch: `systemctl start openvswitch-switch`, or without systemd \
         `/usr/share/openvswitch/scripts/ovs-ctl start`; or pass the right socket with \
         `--ovsdb` (now {})",
        path.display()
    );
    match tokio::time::timeout(SERVICE_TIMEOUT, Ovsdb::connect(path)).await {
        Ok(Ok(ovs)) => Ok(ovs),
        Ok(Err(ovsdb::OvsdbError::Connect { source, .. })) => Err(Check::fail(
            "ovsdb",
            format!("cannot reach ovsdb-server at {}: {source}", path.display()),
            if source.kind() == io::ErrorKind::PermissionDenied {
                "run as root (ovsdb-server's socket is root-only)".to_owned()
            } else {
                fix
            },
        )),
        Ok(Err(e)) => Err(Check::fail("ovsdb", e.to_string(), fix)),
        Err(_) => Err(Check::fail(
            "ovsdb",
            format!(
                "ovsdb-server at {} accepted the connection but did not answer within {} s",
                path.display(),
                SERVICE_TIMEOUT.as_secs()
            ),
            "ovsdb-server looks stuck: restart Open vSwitch \
             (`systemctl restart openvswitch-switch` or `ovs-ctl restart`)",
        )),
    }
}

/// ovs-vswitchd applies what dovesnap writes to OVSDB: it must run and answer. Found
/// by name in `/proc`, then asked for its version on its control socket.
pub async fn check_vswitchd(ovsdb_socket: &Path) -> Check {
    const NAME: &str = "ovs-vswitchd";
    let fix = "start it: `systemctl start openvswitch-switch`, or without systemd \
               `ovs-vswitchd --pidfile --detach` (or `/usr/share/openvswitch/scripts/ovs-ctl \
               start`); without it dovesnap's OVS changes time out";
    let Some(pid) = find_process(NAME) else {
        return Check::fail(NAME, "ovs-vswitchd is not running", fix);
    };
    let rundir = ovsdb_socket
        .parent()
        .filter(|d| d.join(format!("{NAME}.{pid}.ctl")).exists())
        .unwrap_or(Path::new("/var/run/openvswitch"));
    let ctl = rundir.join(format!("{NAME}.{pid}.ctl"));
    if !ctl.exists() {
        return Check::ok(
            NAME,
            format!(
                "running (pid {pid}); its control socket is not at {} so it was not queried",
                ctl.display()
            ),
        );
    }
    match tokio::time::timeout(SERVICE_TIMEOUT, unixctl_call(&ctl, "version")).await {
        Ok(Ok(version)) => Check::ok(
            NAME,
            format!(
                "running (pid {pid}) and answering: {}",
                version.lines().next().unwrap_or("").trim()
            ),
        ),
        Ok(Err(e)) => Check::fail(
            NAME,
            format!(
                "running (pid {pid}) but its control socket {}: {e}",
                ctl.display()
            ),
            if e.permission_denied() {
                "run as root (ovs-vswitchd's control socket is root-only)"
            } else {
                "restart Open vSwitch (`systemctl restart openvswitch-switch` or `ovs-ctl restart`)"
            },
        ),
        Err(_) => Check::fail(
            NAME,
            format!(
                "running (pid {pid}) but did not answer `version` within {} s",
                SERVICE_TIMEOUT.as_secs()
            ),
            "ovs-vswitchd looks stuck: restart Open vSwitch \
             (`systemctl restart openvswitch-switch` or `ovs-ctl restart`)",
        ),
    }
}

/// The finding of a check that needs ovsdb-server when it is unreachable.
fn unchecked_without_ovsdb(name: &'static str) -> Check {
    Check::warn(
        name,
        "not checked: ovsdb-server is unreachable",
        "fix the `ovsdb` check first",
    )
}

/// The datapath types ovs-vswitchd offers and the one dovesnap will give new bridges.
pub async fn check_datapath(ovs: Option<&Ovsdb>) -> Check {
    const NAME: &str = "datapath";
    let Some(ovs) = ovs else {
        return unchecked_without_ovsdb(NAME);
    };
    let types = match tokio::time::timeout(SERVICE_TIMEOUT, ovs.datapath_types()).await {
        Ok(Ok(types)) => types,
        Ok(Err(e)) => {
            return Check::fail(
                NAME,
                format!("cannot read Open_vSwitch.datapath_types: {e}"),
                "check that ovsdb-server serves the Open_vSwitch database (`ovs-vsctl show`)",
            )
        }
        Err(_) => {
            return Check::fail(
                NAME,
                format!(
                    "ovsdb-server did not answer within {} s",
                    SERVICE_TIMEOUT.as_secs()
                ),
                "restart Open vSwitch (`systemctl restart openvswitch-switch`)",
            )
        }
    };
    datapath_finding(&types, ovsdb::default_datapath_type())
}

/// dovesnap's records in OVSDB (bridges', ports' and overlay `external_ids`) that the
/// daemon cannot trust and leaves alone.
pub async fn check_records(ovs: Option<&Ovsdb>) -> Check {
    const NAME: &str = "records";
    let Some(ovs) = ovs else {
        return unchecked_without_ovsdb(NAME);
    };
    let read = async {
        Ok::<_, ovsdb::OvsdbError>((ovs.list_bridges().await?, ovs.switch_external_ids().await?))
    };
    match tokio::time::timeout(SERVICE_TIMEOUT, read).await {
        Ok(Ok((bridges, ids))) => records_finding(&crate::driver::records::audit(&bridges, &ids)),
        Ok(Err(e)) => Check::fail(
            NAME,
            format!("cannot read the bridges and ports: {e}"),
            "check that ovsdb-server serves the Open_vSwitch database (`ovs-vsctl show`)",
        ),
        Err(_) => Check::fail(
            NAME,
            format!(
                "ovsdb-server did not answer within {} s",
                SERVICE_TIMEOUT.as_secs()
            ),
            "restart Open vSwitch (`systemctl restart openvswitch-switch`)",
        ),
    }
}

/// The `records` finding for the records that cannot be trusted.
pub fn records_finding(bad: &[crate::daemon::status::BadRecord]) -> Check {
    if bad.is_empty() {
        return Check::ok("records", "every dovesnap record in OVSDB reads");
    }
    let list: Vec<String> = bad.iter().map(ToString::to_string).collect();
    Check::warn(
        "records",
        format!(
            "{} record(s) cannot be trusted and are left alone (not managed, their \
             interfaces and rules untouched): {}",
            bad.len(),
            list.join("; ")
        ),
        "restore or remove these external_ids by hand (`ovs-vsctl list bridge`/`list port`), \
         or remove the network/container with Docker and then the leftover bridge or port \
         (`ovs-vsctl del-br`/`del-port`)",
    )
}

/// Overlay mode: this host's OVN chassis settings and integration bridge, and whether
/// the northbound database answers. A host with no OVN settings at all passes: it only
/// matters for mode=overlay.
pub async fn check_ovn(ovs: Option<&Ovsdb>, nb: Option<&ovsdb::Remote>) -> Vec<Check> {
    let Some(ovs) = ovs else {
        return vec![unchecked_without_ovsdb("ovn-chassis")];
    };
    let ids = match tokio::time::timeout(SERVICE_TIMEOUT, ovs.switch_external_ids()).await {
        Ok(Ok(ids)) => ids,
        Ok(Err(e)) => {
            return vec![Check::fail(
                "ovn-chassis",
                format!("cannot read Open_vSwitch.external_ids: {e}"),
                "check that ovsdb-server serves the Open_vSwitch database (`ovs-vsctl show`)",
            )]
        }
        Err(_) => {
            return vec![Check::fail(
                "ovn-chassis",
                "ovsdb-server did not answer",
                "restart Open vSwitch",
            )]
        }
    };
    let chassis = crate::ovn::Chassis::from_external_ids(&ids);
    let bridge = ovs
        .bridge(crate::ovn::DEFAULT_BRIDGE)
        .await
        .ok()
        .flatten()
        .is_some();
    let mut checks = vec![ovn_chassis_finding(&chassis, nb.is_some(), bridge)];
    if checks[0].detail.starts_with("not an OVN chassis") {
        return checks;
    }
    let Some(remote) = nb.cloned().or_else(|| chassis.northbound()) else {
        checks.push(Check::fail(
            "ovn-northbound",
            "no northbound database configured",
            "set external_ids:ovn-nb=tcp:CENTRAL:6641 (`ovs-vsctl set Open_vSwitch . \
             external_ids:ovn-nb=...`), or run the daemon with --ovn-nb",
        ));
        return checks;
    };
    let nb = crate::ovn::Northbound::new(remote.clone());
    checks.push(
        match tokio::time::timeout(SERVICE_TIMEOUT, nb.ping()).await {
            Ok(Ok(())) => Check::ok(
                "ovn-northbound",
                format!("the OVN northbound database answers at {remote}"),
            ),
            Ok(Err(e)) => Check::fail(
                "ovn-northbound",
                e.to_string(),
                format!(
                    "start ovn-northd's databases on the central host and let them listen \
                     (`ovn-nbctl set-connection ptcp:6641`), or point dovesnap elsewhere \
                     (external_ids:ovn-nb, --ovn-nb, -o ovs.ovn.nb); now {remote}"
                ),
            ),
            Err(_) => Check::fail(
                "ovn-northbound",
                format!(
                    "{remote} did not answer within {} s",
                    SERVICE_TIMEOUT.as_secs()
                ),
                "check the address and that no firewall drops TCP to it",
            ),
        },
    );
    checks
}

/// The `ovn-chassis` finding from the host's `Open_vSwitch.external_ids`.
pub fn ovn_chassis_finding(
    chassis: &crate::ovn::Chassis,
    nb_given: bool,
    integration_bridge: bool,
) -> Check {
    const NAME: &str = "ovn-chassis";
    let configured = chassis.system_id.is_some()
        || chassis.ovn_remote.is_some()
        || chassis.encap_ip.is_some()
        || chassis.ovn_nb.is_some()
        || nb_given;
    if !configured {
        return Check::ok(
            NAME,
            "not an OVN chassis (only mode=overlay needs one; README, \"Multi-host networks\")",
        );
    }
    if let Err(e) = chassis.name() {
        return Check::fail(NAME, "OVN chassis settings incomplete", e.to_string());
    }
    let detail = format!(
        "chassis {} (ovn-remote {}, encap {} {})",
        chassis.system_id.as_deref().unwrap_or_default(),
        chassis.ovn_remote.as_deref().unwrap_or_default(),
        chassis.encap_type.as_deref().unwrap_or("geneve"),
        chassis.encap_ip.as_deref().unwrap_or_default(),
    );
    if !integration_bridge {
        return Check::fail(
            NAME,
            format!(
                "{detail}, but no integration bridge {}",
                crate::ovn::DEFAULT_BRIDGE
            ),
            "start ovn-controller on this host (`/usr/share/ovn/scripts/ovn-ctl \
             start_controller`): it creates br-int",
        );
    }
    Check::ok(NAME, detail)
}

/// The `datapath` finding for the types OVS offers and the one dovesnap picked.
pub fn datapath_finding(types: &[String], chosen: &str) -> Check {
    const NAME: &str = "datapath";
    let offered = if types.is_empty() {
        "none".to_owned()
    } else {
        types.join(", ")
    };
    if types.is_empty() {
        return Check::fail(
            NAME,
            "OVS lists no datapath types: ovs-vswitchd has never run against this database",
            "start ovs-vswitchd (`systemctl start openvswitch-switch` or \
             `ovs-vswitchd --pidfile --detach`)",
        );
    }
    if !types.iter().any(|t| t == chosen) {
        return Check::fail(
            NAME,
            format!("dovesnap would use `{chosen}` but OVS offers only: {offered}"),
            "install an Open vSwitch build with that datapath, or report this",
        );
    }
    if chosen == "netdev" {
        return Check::warn(
            NAME,
            format!(
                "types: {offered}; dovesnap uses `netdev` (userspace): the openvswitch kernel \
                 module is not loaded, so ovs-vswitchd forwards every frame between \
                 containers itself (more CPU and latency, lower throughput, no kernel flow \
                 offload)"
            ),
            "for the kernel datapath: `modprobe openvswitch` (kernel CONFIG_OPENVSWITCH), \
             then restart Open vSwitch; bridges made before keep `netdev`",
        );
    }
    Check::ok(
        NAME,
        format!("types: {offered}; dovesnap uses `{chosen}` (the kernel datapath)"),
    )
}

/// bpffs: dovesnap does not pin anything, but `bpftool` and other tools want it.
pub fn check_bpffs() -> Check {
    const NAME: &str = "bpffs";
    match std::fs::read_to_string("/proc/mounts") {
        Ok(mounts) if bpffs_mounted(&mounts, BPFFS) => {
            Check::ok(NAME, format!("bpffs is mounted at {BPFFS}"))
        }
        Ok(_) => Check::warn(
            NAME,
            format!(
                "no bpffs at {BPFFS}: dovesnap does not need it, but tools that inspect or \
                 pin eBPF objects (bpftool, ...) do"
            ),
            format!("`mount -t bpf bpf {BPFFS}` (or a `sys-fs-bpf.mount` unit)"),
        ),
        Err(e) => Check::warn(
            NAME,
            format!("cannot read /proc/mounts: {e}"),
            "check that /proc is mounted",
        ),
    }
}

/// nat-fast's XDP program: loaded (the verifier runs) and unloaded, attached nowhere.
pub fn check_xdp() -> Check {
    const NAME: &str = "xdp";
    match XdpProgram::load() {
        Ok(prog) => {
            drop(prog);
            Check::ok(
                NAME,
                "the embedded XDP program loads (the kernel's verifier accepts it)",
            )
        }
        Err(XdpError::NotBuilt) => Check::fail(
            NAME,
            "this binary was built without its XDP program (AYA_BUILD_SKIP was set): \
             nat-fast networks will not work (flat and nat do not need XDP)",
            "rebuild dovesnap without AYA_BUILD_SKIP after `cargo xtask setup`",
        ),
        Err(e @ XdpError::PermissionDenied { .. }) => Check::fail(
            NAME,
            e.to_string(),
            "run as root (or with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON)",
        ),
        Err(e) => Check::fail(
            NAME,
            format!("{e}; nat-fast networks will not work"),
            "check the kernel's BPF support (CONFIG_BPF_SYSCALL, BTF at \
             /sys/kernel/btf/vmlinux) and that dovesnap was built for this kernel",
        ),
    }
}

/// AF_XDP: the translator's UMEM and its anchor socket on `lo` queue 0.
pub fn check_afxdp() -> Check {
    const NAME: &str = "afxdp";
    let cfg = XskConfig::default();
    let anchor = cfg.anchor_ifname.clone();
    match Xsk::new(cfg) {
        Ok(xsk) => {
            drop(xsk);
            Check::ok(
                NAME,
                format!("an AF_XDP socket and its UMEM can be created ({anchor} queue 0)"),
            )
        }
        Err(e) if afxdp_busy(&e) => Check::warn(
            NAME,
            format!(
                "{anchor} queue 0 already has an AF_XDP socket (EBUSY): in use by a running \
                 dovesnap daemon's translator, so this check cannot bind its own"
            ),
            format!(
                "nothing to do if `dovesnap daemon` runs nat-fast networks; otherwise find the \
                 other AF_XDP user of {anchor} with `ss --xdp`"
            ),
        ),
        Err(e @ AfXdpError::Umem { .. }) => Check::fail(
            NAME,
            format!("{e}; nat-fast networks will not work"),
            "run as root; check `ulimit -l` (locked memory) and CONFIG_XDP_SOCKETS",
        ),
        Err(e) => Check::fail(
            NAME,
            format!("{e}; nat-fast networks will not work"),
            "run as root on a kernel with CONFIG_XDP_SOCKETS",
        ),
    }
}

/// Whether the anchor could not be bound because another socket holds the queue.
fn afxdp_busy(e: &AfXdpError) -> bool {
    match e {
        AfXdpError::AlreadyOpen { .. } => true,
        AfXdpError::Bind { cause, .. } => {
            cause.contains(&format!("os error {}", libc::EBUSY))
                || cause.contains("Device or resource busy")
        }
        _ => false,
    }
}

/// dockerd answers `GET /_ping` on its socket.
pub async fn check_docker(socket: &Path) -> Check {
    const NAME: &str = "docker";
    let start = "start dockerd (`systemctl start docker`)";
    match tokio::time::timeout(SERVICE_TIMEOUT, docker_ping(socket)).await {
        Ok(Ok(PingAnswer { status: 200, api })) => Check::ok(
            NAME,
            format!(
                "dockerd answers /_ping at {}{}",
                socket.display(),
                api.map(|v| format!(" (API {v})")).unwrap_or_default()
            ),
        ),
        Ok(Ok(PingAnswer { status, .. })) => Check::fail(
            NAME,
            format!(
                "dockerd at {} answered /_ping with {status}",
                socket.display()
            ),
            "see dockerd's log (`journalctl -u docker`)",
        ),
        Ok(Err(GetError::Connect(e))) => {
            let (what, fix) = match e.kind() {
                io::ErrorKind::NotFound => ("no socket", start.to_owned()),
                io::ErrorKind::ConnectionRefused => {
                    ("a stale socket (nothing listens)", start.to_owned())
                }
                io::ErrorKind::PermissionDenied => (
                    "permission denied",
                    "run as root (dockerd's socket is root/docker-group only)".to_owned(),
                ),
                _ => ("cannot connect", start.to_owned()),
            };
            Check::fail(NAME, format!("{what} at {}: {e}", socket.display()), fix)
        }
        Ok(Err(GetError::Http(e))) => Check::fail(
            NAME,
            format!("dockerd at {}: {e}", socket.display()),
            "see dockerd's log (`journalctl -u docker`)",
        ),
        Err(_) => Check::fail(
            NAME,
            format!(
                "dockerd at {} did not answer /_ping within {} s",
                socket.display(),
                SERVICE_TIMEOUT.as_secs()
            ),
            "dockerd looks stuck: see its log and restart it (`systemctl restart docker`)",
        ),
    }
}

struct PingAnswer {
    status: u16,
    /// The `Api-Version` header.
    api: Option<String>,
}

async fn docker_ping(socket: &Path) -> Result<PingAnswer, GetError> {
    let answer = crate::daemon::http::get(socket, "/_ping").await?;
    Ok(PingAnswer {
        status: answer.status,
        api: answer
            .headers
            .get("api-version")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    })
}

/// The plugin socket Docker discovers the driver by: present and listening means the
/// daemon runs.
pub fn check_plugin_socket(path: &Path) -> Check {
    const NAME: &str = "plugin-socket";
    let start = "start the daemon: `systemctl start dovesnap` (packaging/dovesnap.service) \
                 or `dovesnap daemon`";
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Check::warn(
            NAME,
            format!(
                "no plugin socket at {}: the dovesnap daemon is not running, so Docker \
                 cannot use the `ovs` driver",
                path.display()
            ),
            start,
        ),
        Err(e) => Check::warn(
            NAME,
            format!("cannot look at {}: {e}", path.display()),
            "run as root",
        ),
        Ok(meta) if !meta.file_type().is_socket() => Check::fail(
            NAME,
            format!("{} exists but is not a socket", path.display()),
            format!("remove it (`rm {}`), then {start}", path.display()),
        ),
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => Check::ok(
                NAME,
                format!("the dovesnap daemon listens at {}", path.display()),
            ),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Check::warn(
                NAME,
                format!(
                    "{} is a stale socket (nothing listens): the daemon was killed",
                    path.display()
                ),
                format!("{start}; it replaces the stale socket"),
            ),
            Err(e) => Check::warn(
                NAME,
                format!("cannot connect to {}: {e}", path.display()),
                "run as root",
            ),
        },
    }
}

/// nat and nat-fast networks need a working `nft`.
pub fn check_nftables() -> Check {
    const NAME: &str = "nftables";
    match NftFirewall::new().probe() {
        Ok(()) => Check::ok(NAME, "`nft` runs and dovesnap's table can be listed"),
        Err(e @ crate::firewall::FirewallError::NftMissing { .. }) => Check::fail(
            NAME,
            format!("{e}; nat and nat-fast networks will not work"),
            "`apt-get install nftables`",
        ),
        Err(e) => Check::fail(
            NAME,
            format!("{e}; nat and nat-fast networks will not work"),
            "run as root (or with CAP_NET_ADMIN); if root already, see nft's error in the finding",
        ),
    }
}

/// The host's forward rules that may drop nat-fast traffic (`DOCKER-USER`, the forward
/// chains of the host's own nftables tables), judged against the subnets of the
/// nat-fast networks recorded in OVSDB, and how nat-fast honours each.
pub async fn check_host_rules(ovs: Option<&Ovsdb>) -> Check {
    let mut subnets = Vec::new();
    if let Some(ovs) = ovs {
        if let Ok(bridges) = ovs.list_bridges().await {
            subnets = crate::driver::records::nat_fast_subnets(&bridges);
        }
    }
    match crate::firewall::hostrules::read(&subnets) {
        Ok(rules) => host_rules_finding(&rules),
        Err(e) => Check::warn(
            "nat-fast-host-rules",
            format!("cannot read the host's forward rules ({e}): nat-fast then keeps all its traffic on the kernel's path"),
            "run as root, with iptables and nft installed",
        ),
    }
}

/// The `nat-fast-host-rules` finding for the rules read.
pub fn host_rules_finding(rules: &[crate::firewall::hostrules::HostRule]) -> Check {
    use crate::firewall::hostrules::Honoured;
    const NAME: &str = "nat-fast-host-rules";
    if rules.is_empty() {
        return Check::ok(
            NAME,
            "no drop or reject rule in DOCKER-USER or an nftables forward chain: nat-fast has \
             nothing to honour",
        );
    }
    let list = rules
        .iter()
        .map(|r| format!("{} `{}`: {}", r.place, r.text, r.how()))
        .collect::<Vec<_>>()
        .join("; ");
    if rules
        .iter()
        .any(|r| matches!(r.honoured, Honoured::Kernel(_)))
    {
        Check::warn(
            NAME,
            format!("nat-fast honours the host's forward rules by the kernel's path: {list}"),
            "a rule nat-fast cannot bound keeps all nat-fast traffic on the kernel's path (as \
             slow as mode=nat); give it a destination address (-d) outside the containers' \
             subnets, a protocol and a port to keep the rest on the fast path",
        )
    } else {
        Check::ok(
            NAME,
            format!("nat-fast honours the host's forward rules exactly: {list}"),
        )
    }
}

/// The filter table's FORWARD policy (Docker usually sets DROP).
pub fn check_forward_policy() -> Check {
    const NAME: &str = "forward-policy";
    let out = match std::process::Command::new("iptables")
        .args(["-S", "FORWARD"])
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Check::warn(
                NAME,
                "iptables is not installed, so the FORWARD policy was not read (dovesnap \
                 adds no iptables rules then)",
                "if another tool drops forwarded traffic, check `nft list ruleset`",
            )
        }
        Err(e) => {
            return Check::warn(
                NAME,
                format!("cannot run `iptables -S FORWARD`: {e}"),
                "run as root",
            )
        }
    };
    if !out.status.success() {
        return Check::warn(
            NAME,
            format!(
                "`iptables -S FORWARD` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            "run as root",
        );
    }
    let listing = String::from_utf8_lossy(&out.stdout);
    let docker_user = std::process::Command::new("iptables")
        .args(["-S", "DOCKER-USER"])
        .output()
        .is_ok_and(|o| o.status.success());
    forward_finding(chain_policy(&listing, "FORWARD").as_deref(), docker_user)
}

/// The `forward-policy` finding for a FORWARD policy and whether DOCKER-USER exists.
pub fn forward_finding(policy: Option<&str>, docker_user: bool) -> Check {
    const NAME: &str = "forward-policy";
    let chain = if docker_user {
        "FORWARD below Docker's jumps to DOCKER-USER and DOCKER-ISOLATION-STAGE-1 (your \
         DOCKER-USER rules come first)"
    } else {
        "the top of FORWARD (there is no DOCKER-USER chain)"
    };
    match policy {
        Some("DROP") => Check::ok(
            NAME,
            format!(
                "FORWARD policy DROP: fine, dovesnap adds ACCEPT rules for its nat networks in \
                 {chain} and loosens nothing else"
            ),
        ),
        Some("ACCEPT") => Check::ok(
            NAME,
            "FORWARD policy ACCEPT; dovesnap's nftables table does the isolation of its \
             networks",
        ),
        Some(other) => Check::warn(
            NAME,
            format!("unexpected FORWARD policy `{other}`"),
            "check `iptables -S FORWARD`",
        ),
        None => Check::warn(
            NAME,
            "no policy line in `iptables -S FORWARD`",
            "check `iptables -S FORWARD` and `nft list ruleset`",
        ),
    }
}

/// `net.ipv4.ip_forward`: nat networks route, so it must be on.
pub fn check_ip_forward() -> Check {
    const NAME: &str = "ip-forward";
    match sysctl::read("net/ipv4/ip_forward") {
        Ok(v) if v == "1" => Check::ok(NAME, "net.ipv4.ip_forward = 1"),
        Ok(v) => Check::warn(
            NAME,
            format!(
                "net.ipv4.ip_forward = {v}: nat networks cannot route until it is 1; dovesnap \
                 turns it on when it creates a non-internal nat network"
            ),
            "`sysctl -w net.ipv4.ip_forward=1` now, or let dovesnap do it; if it is off on \
             purpose, use only flat or internal networks",
        ),
        Err(e) => Check::warn(
            NAME,
            format!("cannot read net.ipv4.ip_forward: {e}"),
            "check that /proc/sys is mounted",
        ),
    }
}

/// `net.ipv4.ip_local_port_range` must stay below the translator's ports.
pub fn check_local_port_range(translator: &RangeInclusive<u16>) -> Check {
    const NAME: &str = "local-port-range";
    match sysctl::local_port_range() {
        Ok(range) => port_range_finding(range, translator),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => Check::warn(
            NAME,
            e.to_string(),
            "check `sysctl net.ipv4.ip_local_port_range`",
        ),
        Err(e) => Check::warn(
            NAME,
            format!("cannot read net.ipv4.ip_local_port_range: {e}"),
            "check that /proc/sys is mounted",
        ),
    }
}

/// The `local-port-range` finding for the kernel's ephemeral range.
pub fn port_range_finding(range: RangeInclusive<u16>, translator: &RangeInclusive<u16>) -> Check {
    const NAME: &str = "local-port-range";
    let (t0, t1) = (*translator.start(), *translator.end());
    let which = nat_ports_name(translator);
    let (lo, hi) = (*range.start(), *range.end());
    match overlap(&range, translator) {
        None => Check::ok(
            NAME,
            format!(
                "net.ipv4.ip_local_port_range = {lo} {hi}: clear of nat-fast's translator \
                 ports {t0}-{t1} ({which})"
            ),
        ),
        Some(common) => {
            // Keep the part of the range outside the translator's; Linux's default if
            // none is left.
            let (new_lo, new_hi) = if hi > t1 {
                (lo.max(t1 + 1), hi)
            } else if lo < t0 {
                (lo, t0 - 1)
            } else {
                (32768, 60999)
            };
            Check::fail(
                NAME,
                format!(
                    "net.ipv4.ip_local_port_range = {lo} {hi} overlaps nat-fast's translator \
                     ports {t0}-{t1} ({which}; at {}-{}): a host connection \
                     and a translated one could take the same port towards the same remote, \
                     and the host's would lose its replies to the translator",
                    common.start(),
                    common.end()
                ),
                format!(
                    "`sysctl -w net.ipv4.ip_local_port_range=\"{new_lo} {new_hi}\"` and \
                     persist it: `echo 'net.ipv4.ip_local_port_range = {new_lo} {new_hi}' > \
                     /etc/sysctl.d/60-dovesnap.conf`"
                ),
            )
        }
    }
}

/// `net.ipv4.ip_local_reserved_ports`: informational.
pub fn check_reserved_ports(translator: &RangeInclusive<u16>) -> Check {
    const NAME: &str = "reserved-ports";
    match sysctl::read("net/ipv4/ip_local_reserved_ports") {
        Ok(v) => match parse_port_list(&v) {
            Some(list) => reserved_finding(&v, &list, translator),
            None => Check::warn(
                NAME,
                format!("cannot parse net.ipv4.ip_local_reserved_ports `{v}`"),
                "check `sysctl net.ipv4.ip_local_reserved_ports`",
            ),
        },
        Err(e) => Check::warn(
            NAME,
            format!("cannot read net.ipv4.ip_local_reserved_ports: {e}"),
            "check that /proc/sys is mounted",
        ),
    }
}

/// `--nat-ports` as the findings name it: the default or the one given.
fn nat_ports_name(translator: &RangeInclusive<u16>) -> &'static str {
    if *translator == TRANSLATOR_PORTS {
        "the default --nat-ports"
    } else {
        "--nat-ports"
    }
}

/// The `reserved-ports` finding (always OK: it only informs).
pub fn reserved_finding(
    raw: &str,
    list: &[RangeInclusive<u16>],
    translator: &RangeInclusive<u16>,
) -> Check {
    const NAME: &str = "reserved-ports";
    let (t0, t1) = (*translator.start(), *translator.end());
    if list.is_empty() {
        return Check::ok(NAME, "net.ipv4.ip_local_reserved_ports is empty");
    }
    let covered = covered_ports(list, translator);
    let total = u32::from(t1 - t0) + 1;
    Check::ok(
        NAME,
        format!(
            "net.ipv4.ip_local_reserved_ports = {}; {covered} of the {total} translator \
             ports ({t0}-{t1}) are among them",
            raw.trim()
        ),
    )
}

/// The host's default IPv4 route, as the driver reads it (netlink), with its
/// interface's name: nat-fast's uplink when `ovs.nat.uplink` is not given.
pub async fn read_default_route() -> Result<Option<(DefaultRoute, String)>, String> {
    let netlink = Netlink::new().map_err(|e| e.to_string())?;
    let Some(route) = netlink.default_route().await.map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let name = netlink
        .name_of(route.ifindex)
        .await
        .map_err(|e| e.to_string())?
        .unwrap_or_else(|| format!("ifindex {}", route.ifindex));
    Ok(Some((route, name)))
}

/// A default IPv4 route: nat-fast's uplink when `ovs.nat.uplink` is not given.
pub fn check_default_route(route: &Result<Option<(DefaultRoute, String)>, String>) -> Check {
    const NAME: &str = "default-route";
    match route {
        Ok(Some((r, iface))) => {
            let via = r.gateway.map(|g| format!("via {g} ")).unwrap_or_default();
            Check::ok(
                NAME,
                format!("default {via}dev {iface}: nat-fast's default uplink is {iface}"),
            )
        }
        Ok(None) => Check::warn(
            NAME,
            "no default IPv4 route: nat-fast networks need `-o ovs.nat.uplink=IFACE`, and \
             nat networks reach only directly connected networks",
            "add a default route (`ip route add default via GATEWAY`), or name the uplink \
             with `-o ovs.nat.uplink=IFACE` on each nat-fast network",
        ),
        Err(e) => Check::warn(
            NAME,
            format!("cannot read the routing table: {e}"),
            "check that netlink works in this namespace",
        ),
    }
}

/// What nat-fast does on each uplink it would use: those of existing nat-fast networks
/// (their `ovs.nat.uplink`, recorded on their bridges) and the default route's interface.
pub async fn check_nat_fast_uplinks(
    ovs: Option<&Ovsdb>,
    default_uplink: Option<&str>,
) -> Vec<Check> {
    let mut uplinks: Vec<String> = Vec::new();
    if let Some(ovs) = ovs {
        if let Ok(bridges) = ovs.list_bridges().await {
            let key = format!("{}{}", crate::driver::EXT_OPTION_PREFIX, NAT_UPLINK);
            uplinks.extend(
                bridges
                    .iter()
                    .filter_map(|b| b.external_ids.get(&key).cloned()),
            );
        }
    }
    uplinks.extend(default_uplink.map(str::to_owned));
    uplinks.sort();
    uplinks.dedup();
    uplinks
        .iter()
        .map(|name| {
            let features = std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))
                .map_err(|e| e.to_string())
                .and_then(|i| i.trim().parse::<u32>().map_err(|e| e.to_string()))
                .and_then(|i| crate::host::netdev::query(i).map_err(|e| e.to_string()));
            uplink_finding(name, features)
        })
        .collect()
}

/// The finding for nat-fast uplink `name` with the XDP features the kernel reported.
pub fn uplink_finding(
    name: &str,
    features: Result<crate::host::netdev::XdpFeatures, String>,
) -> Check {
    const NAME: &str = "nat-fast-uplink";
    match features {
        Err(e) => Check::warn(
            NAME,
            format!("{name}: cannot read its XDP features ({e}): nat-fast endpoints on it stay on the kernel's nat path"),
            "check that the interface exists; the kernel must be 6.3 or later (netdev netlink family)",
        ),
        Ok(f) if !f.native() => Check::warn(
            NAME,
            format!(
                "{name}: {f}: nat-fast endpoints of the xdp engine (the default) on this \
                 uplink use the kernel's nat path (in generic mode XDP sees GRO \
                 super-packets, which AF_XDP frames cannot hold)"
            ),
            format!(
                "to use the fast path, create {name}'s nat-fast networks with \
                 `-o ovs.nat.engine=tc` (tcx programs, no XDP: they carry sessions on any \
                 uplink, a bridge or macvlan included), or give them an uplink whose driver \
                 runs XDP natively (`-o ovs.nat.uplink=IFACE`); or use mode=nat"
            ),
        ),
        Ok(f) if !f.redirect_target() => Check::warn(
            NAME,
            format!(
                "{name}: {f}: nat-fast translates here, and offloads sessions to XDP toward \
                 containers only (outbound frames stay on AF_XDP)"
            ),
            format!(
                "for a veth uplink, `ethtool -K PEER gro on` on its peer (or an XDP program \
                 there) makes {name} a redirect target; a NIC needs a driver with ndo_xdp_xmit"
            ),
        ),
        Ok(f) => Check::ok(
            NAME,
            format!("{name}: {f}: nat-fast translates and offloads both ways"),
        ),
    }
}

// ---- helpers with I/O -------------------------------------------------------------

/// The pid of a process whose `comm` is `name` (the lowest, if several).
fn find_process(name: &str) -> Option<u32> {
    let mut found = None;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) else {
            continue;
        };
        if comm.trim_end() == name && found.is_none_or(|f| pid < f) {
            found = Some(pid);
        }
    }
    found
}

/// Why a unixctl call failed.
#[derive(Debug, thiserror::Error)]
enum UnixctlError {
    #[error("cannot {what}: {source}")]
    Io {
        what: &'static str,
        source: io::Error,
    },
    #[error("{0}")]
    Answer(String),
}

impl UnixctlError {
    fn permission_denied(&self) -> bool {
        matches!(self, UnixctlError::Io { source, .. }
            if source.kind() == io::ErrorKind::PermissionDenied)
    }
}

/// One call on an OVS unixctl socket (JSON-RPC without framing): the result string.
async fn unixctl_call(ctl: &Path, method: &str) -> Result<String, UnixctlError> {
    let io = |what| move |source| UnixctlError::Io { what, source };
    let mut stream = UnixStream::connect(ctl).await.map_err(io("connect"))?;
    let req = serde_json::json!({"id": 0, "method": method, "params": []});
    stream
        .write_all(req.to_string().as_bytes())
        .await
        .map_err(io("send"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.map_err(io("read"))?;
        if n == 0 {
            return Err(UnixctlError::Answer(
                "closed the connection without answering".into(),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Ok(answer) = serde_json::from_slice::<serde_json::Value>(&buf) {
            if let Some(result) = answer.get("result").and_then(|r| r.as_str()) {
                return Ok(result.to_owned());
            }
            return Err(UnixctlError::Answer(format!(
                "answered an error: {}",
                answer["error"]
            )));
        }
        if buf.len() > 1 << 20 {
            return Err(UnixctlError::Answer(
                "answered more than 1 MiB without a complete reply".into(),
            ));
        }
    }
}

// ---- pure parsing and logic -------------------------------------------------------

/// Whether `/proc/mounts` text has a bpf filesystem mounted at `at`.
pub fn bpffs_mounted(mounts: &str, at: &str) -> bool {
    mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (_, point, fstype) = (f.next(), f.next(), f.next());
        point == Some(at) && fstype == Some("bpf")
    })
}

/// `net.ipv4.ip_local_reserved_ports`'s value: comma-separated ports and ranges
/// (`8080,9148-9150`); empty means none.
pub fn parse_port_list(s: &str) -> Option<Vec<RangeInclusive<u16>>> {
    let s = s.trim();
    if s.is_empty() {
        return Some(Vec::new());
    }
    s.split(',')
        .map(|item| {
            let item = item.trim();
            match item.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                    (a <= b).then_some(a..=b)
                }
                None => item.parse().ok().map(|p| p..=p),
            }
        })
        .collect()
}

/// The ports two ranges have in common, if any.
pub fn overlap(a: &RangeInclusive<u16>, b: &RangeInclusive<u16>) -> Option<RangeInclusive<u16>> {
    let lo = *a.start().max(b.start());
    let hi = *a.end().min(b.end());
    (lo <= hi).then_some(lo..=hi)
}

/// How many ports of `target` lie in any of `ranges` (which may overlap each other).
pub fn covered_ports(ranges: &[RangeInclusive<u16>], target: &RangeInclusive<u16>) -> u32 {
    let mut parts: Vec<RangeInclusive<u16>> =
        ranges.iter().filter_map(|r| overlap(r, target)).collect();
    parts.sort_by_key(|r| *r.start());
    let mut total = 0u32;
    let mut next: u32 = 0; // first port not yet counted
    for r in parts {
        let (lo, hi) = (u32::from(*r.start()).max(next), u32::from(*r.end()));
        if lo <= hi {
            total += hi - lo + 1;
            next = hi + 1;
        }
    }
    total
}

/// The policy of `chain` in `iptables -S` output (`-P FORWARD DROP`).
pub fn chain_policy(listing: &str, chain: &str) -> Option<String> {
    listing.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        (f.next() == Some("-P") && f.next() == Some(chain))
            .then(|| f.next().map(str::to_owned))
            .flatten()
    })
}

/// The checks as an aligned table for people: `CHECK STATUS DETAIL`, the fix on an
/// indented line under a check that is not OK, and a summary line.
pub fn render_table(checks: &[Check]) -> String {
    let name_w = checks
        .iter()
        .map(|c| c.check.chars().count())
        .chain(["CHECK".len()])
        .max()
        .unwrap_or(0);
    let status_w = "STATUS".len();
    let mut out = format!("{:name_w$}  {:status_w$}  DETAIL\n", "CHECK", "STATUS");
    for c in checks {
        out.push_str(&format!(
            "{:name_w$}  {:status_w$}  {}\n",
            c.check,
            c.status.as_str(),
            c.detail
        ));
        if let Some(fix) = c.fix.as_deref().filter(|_| c.status != Status::Ok) {
            out.push_str(&format!("{:name_w$}  {:status_w$}  fix: {fix}\n", "", ""));
        }
    }
    let count = |s| checks.iter().filter(|c| c.status == s).count();
    out.push_str(&format!(
        "\n{} OK, {} WARN, {} FAIL\n",
        count(Status::Ok),
        count(Status::Warn),
        count(Status::Fail)
    ));
    out
}

/// The checks as a JSON array of `{check, status, detail, fix}`.
pub fn render_json(checks: &[Check]) -> String {
    serde_json::to_string_pretty(checks).expect("checks serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_rules_findings_say_how_each_is_honoured() {
        use crate::firewall::hostrules::parse_iptables;
        assert_eq!(host_rules_finding(&[]).status, Status::Ok);
        let subnets = ["10.234.2.0/24".parse().unwrap()];
        let exact = parse_iptables(
            "-A DOCKER-USER -d 10.234.10.2/32 -p tcp -m tcp --dport 7001 -j DROP\n",
            &subnets,
        );
        let c = host_rules_finding(&exact);
        assert_eq!(c.status, Status::Ok);
        assert!(
            c.detail.contains("10.234.10.2/32 tcp port 7001"),
            "{}",
            c.detail
        );
        let all = parse_iptables("-A DOCKER-USER -s 10.234.2.0/24 -j DROP\n", &subnets);
        let c = host_rules_finding(&all);
        assert_eq!(c.status, Status::Warn);
        assert!(c.detail.contains("all nat-fast traffic"), "{}", c.detail);
    }

    #[test]
    fn records_finding_names_each_bad_record() {
        assert_eq!(records_finding(&[]).status, Status::Ok);
        let bad = crate::daemon::status::BadRecord {
            record: "port ovsv9f8e7d6c5b".into(),
            id: "9f8e7d6c5b4a".into(),
            reason: "sandbox \"/proc/1/ns/net\" is not ...".into(),
        };
        let c = records_finding(&[bad]);
        assert_eq!(c.status, Status::Warn);
        assert!(c.detail.contains("port ovsv9f8e7d6c5b"), "{c:?}");
        assert!(c.detail.contains("/proc/1/ns/net"), "{c:?}");
    }

    #[test]
    fn ovn_chassis_findings() {
        use crate::ovn::Chassis;
        let none = ovn_chassis_finding(&Chassis::default(), false, false);
        assert_eq!(none.status, Status::Ok);
        assert!(
            none.detail.starts_with("not an OVN chassis"),
            "{}",
            none.detail
        );
        let half = Chassis {
            ovn_remote: Some("tcp:192.0.2.254:6642".into()),
            ..Chassis::default()
        };
        let c = ovn_chassis_finding(&half, false, false);
        assert_eq!(c.status, Status::Fail);
        assert!(c.fix.unwrap().contains("external_ids:ovn-encap-ip"));
        let full = Chassis {
            system_id: Some("h1".into()),
            encap_ip: Some("192.0.2.1".into()),
            ..half
        };
        let c = ovn_chassis_finding(&full, false, false);
        assert_eq!(c.status, Status::Fail);
        assert!(c.fix.unwrap().contains("ovn-controller"));
        let c = ovn_chassis_finding(&full, false, true);
        assert_eq!(c.status, Status::Ok);
        assert_eq!(
            c.detail,
            "chassis h1 (ovn-remote tcp:192.0.2.254:6642, encap geneve 192.0.2.1)"
        );
    }

    #[test]
    fn finds_bpffs_in_proc_mounts() {
        let mounts = "sysfs /sys sysfs rw 0 0\nbpf /sys/fs/bpf bpf rw,relatime 0 0\n";
        assert!(bpffs_mounted(mounts, "/sys/fs/bpf"));
        assert!(!bpffs_mounted("sysfs /sys sysfs rw 0 0\n", "/sys/fs/bpf"));
        // Something else mounted there is not bpffs.
        assert!(!bpffs_mounted(
            "tmpfs /sys/fs/bpf tmpfs rw 0 0\n",
            "/sys/fs/bpf"
        ));
        assert!(!bpffs_mounted("", "/sys/fs/bpf"));
    }

    #[test]
    fn parses_the_port_range_sysctl() {}

    #[test]
    fn parses_the_reserved_ports_sysctl() {
        assert_eq!(parse_port_list(""), Some(vec![]));
        assert_eq!(parse_port_list("\n"), Some(vec![]));
        assert_eq!(
            parse_port_list("8080,9148-9150"),
            Some(vec![8080..=8080, 9148..=9150])
        );
        assert_eq!(parse_port_list("61000-65535\n"), Some(vec![61000..=65535]));
        assert_eq!(parse_port_list("9150-9148"), None);
        assert_eq!(parse_port_list("80,x"), None);
        assert_eq!(parse_port_list("80,"), None);
    }

    #[test]
    fn overlap_and_coverage() {
        assert_eq!(overlap(&(32768..=60999), &TRANSLATOR_PORTS), None);
        assert_eq!(
            overlap(&(32767..=60999), &TRANSLATOR_PORTS),
            Some(32767..=32767)
        );
        assert_eq!(
            overlap(&(1024..=65535), &TRANSLATOR_PORTS),
            Some(1024..=32767)
        );
        assert_eq!(
            overlap(&(2000..=2010), &TRANSLATOR_PORTS),
            Some(2000..=2010)
        );

        assert_eq!(covered_ports(&[], &TRANSLATOR_PORTS), 0);
        assert_eq!(covered_ports(&[40000..=40000], &TRANSLATOR_PORTS), 0);
        assert_eq!(covered_ports(&[1024..=32767], &TRANSLATOR_PORTS), 31744);
        // Overlapping and unsorted ranges are counted once.
        assert_eq!(
            covered_ports(
                &[8005..=8009, 8000..=8006, 32767..=32767],
                &TRANSLATOR_PORTS
            ),
            11
        );
        assert_eq!(covered_ports(&[0..=65535], &(0..=65535)), 65536);
    }

    #[test]
    fn port_range_overlapping_the_translator_fails_with_the_sysctl() {
        let ok = port_range_finding(32768..=60999, &TRANSLATOR_PORTS);
        assert_eq!(ok.status, Status::Ok);
        assert_eq!(ok.fix, None);

        let bad = port_range_finding(1024..=65535, &TRANSLATOR_PORTS);
        assert_eq!(bad.status, Status::Fail);
        assert!(bad.detail.contains("1024-32767"), "{}", bad.detail);
        let fix = bad.fix.unwrap();
        assert!(
            fix.contains("sysctl -w net.ipv4.ip_local_port_range=\"32768 65535\""),
            "{fix}"
        );

        // A range entirely inside the translator's falls back to Linux's default.
        let inside = port_range_finding(2000..=3000, &TRANSLATOR_PORTS);
        assert!(inside.fix.unwrap().contains("\"32768 60999\""));

        // Against the daemon's own --nat-ports, not the default.
        let moved = port_range_finding(32768..=60999, &(40000..=50000));
        assert_eq!(moved.status, Status::Fail);
        assert!(
            moved.detail.contains("40000-50000 (--nat-ports"),
            "{}",
            moved.detail
        );
    }

    #[test]
    fn reserved_ports_only_inform() {
        let none = reserved_finding("", &[], &TRANSLATOR_PORTS);
        assert_eq!(none.status, Status::Ok);
        assert!(none.detail.contains("empty"));
        let some = reserved_finding("9000-9999\n", &[9000..=9999], &TRANSLATOR_PORTS);
        assert_eq!(some.status, Status::Ok);
        assert!(some.detail.contains("1000 of the 31744"), "{}", some.detail);
    }

    #[test]
    fn netdev_datapath_warns_and_a_missing_one_fails() {
        let types = |t: &[&str]| t.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let netdev = datapath_finding(&types(&["netdev", "system"]), "netdev");
        assert_eq!(netdev.status, Status::Warn);
        assert!(netdev.detail.contains("userspace"));
        assert!(netdev.fix.unwrap().contains("modprobe openvswitch"));
        assert_eq!(
            datapath_finding(&types(&["netdev", "system"]), "system").status,
            Status::Ok
        );
        assert_eq!(
            datapath_finding(&types(&["netdev"]), "system").status,
            Status::Fail
        );
        assert_eq!(datapath_finding(&[], "netdev").status, Status::Fail);
    }

    #[test]
    fn uplink_findings_say_what_nat_fast_does() {
        use crate::host::netdev::XdpFeatures;
        let full = uplink_finding("eth0", Ok(XdpFeatures(1 | 2 | 4)));
        assert_eq!(full.status, Status::Ok);
        assert!(full.detail.contains("offloads both ways"), "{full:?}");
        let veth = uplink_finding("veth0", Ok(XdpFeatures(1 | 2)));
        assert_eq!(veth.status, Status::Warn);
        assert!(veth.detail.contains("toward containers only"), "{veth:?}");
        assert!(veth.fix.as_deref().unwrap().contains("gro on"), "{veth:?}");
        let bridge = uplink_finding("br0", Ok(XdpFeatures(0)));
        assert_eq!(bridge.status, Status::Warn);
        assert!(bridge.detail.contains("kernel's nat path"), "{bridge:?}");
        let fix = bridge.fix.as_deref().unwrap();
        assert!(fix.contains("ovs.nat.engine=tc"), "{bridge:?}");
        let gone = uplink_finding("nope0", Err("No such file".into()));
        assert_eq!(gone.status, Status::Warn);
        assert!(gone.detail.starts_with("nope0: cannot read"), "{gone:?}");
    }

    #[test]
    fn default_route_finding_names_the_uplink() {
        let route = DefaultRoute {
            ifindex: 2,
            gateway: Some(std::net::Ipv4Addr::new(192, 0, 2, 1)),
            metric: 100,
        };
        let found = check_default_route(&Ok(Some((route.clone(), "eth0".into()))));
        assert_eq!(found.status, Status::Ok);
        assert_eq!(
            found.detail,
            "default via 192.0.2.1 dev eth0: nat-fast's default uplink is eth0"
        );
        let onlink = DefaultRoute {
            gateway: None,
            ..route
        };
        let found = check_default_route(&Ok(Some((onlink, "wg0".into()))));
        assert_eq!(
            found.detail,
            "default dev wg0: nat-fast's default uplink is wg0"
        );
        assert_eq!(check_default_route(&Ok(None)).status, Status::Warn);
        let broken = check_default_route(&Err("EPERM".into()));
        assert_eq!(broken.status, Status::Warn);
        assert!(broken.detail.contains("EPERM"), "{broken:?}");
    }

    #[test]
    fn reads_the_forward_policy() {
        let listing = "-P FORWARD DROP\n-A FORWARD -j DOCKER-USER\n";
        assert_eq!(chain_policy(listing, "FORWARD").as_deref(), Some("DROP"));
        assert_eq!(chain_policy(listing, "INPUT"), None);
        assert_eq!(chain_policy("", "FORWARD"), None);

        let drop = forward_finding(Some("DROP"), true);
        assert_eq!(drop.status, Status::Ok);
        assert!(drop.detail.contains("DOCKER-USER"));
        assert!(forward_finding(Some("DROP"), false)
            .detail
            .contains("no DOCKER-USER"));
        assert_eq!(forward_finding(Some("ACCEPT"), true).status, Status::Ok);
        assert_eq!(forward_finding(None, true).status, Status::Warn);
    }

    #[test]
    fn findings_are_one_line() {
        assert_eq!(one_line("a\n  b  \n\nc\n"), "a / b / c");
        assert_eq!(one_line("single"), "single");
        let c = Check::fail("nftables", "nft failed:\nnetlink: Error", "do\nthis");
        assert_eq!(c.detail, "nft failed: / netlink: Error");
        assert_eq!(c.fix.as_deref(), Some("do / this"));
    }

    #[test]
    fn afxdp_busy_is_recognised() {
        let busy = AfXdpError::Bind {
            ifname: "lo".into(),
            queue: 0,
            cause: "Device or resource busy (os error 16) (this is the UMEM's anchor socket)"
                .into(),
        };
        assert!(afxdp_busy(&busy));
        let other = AfXdpError::Bind {
            ifname: "lo".into(),
            queue: 0,
            cause: "Operation not permitted (os error 1)".into(),
        };
        assert!(!afxdp_busy(&other));
    }

    fn scratch(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("dovesnap-doctor-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn plugin_socket_absent_stale_live_or_not_a_socket() {
        let dir = scratch("plugin");
        let sock = dir.join("ovs.sock");
        let absent = check_plugin_socket(&sock);
        assert_eq!(absent.status, Status::Warn);
        assert!(absent.detail.contains("not running"), "{}", absent.detail);

        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        assert_eq!(check_plugin_socket(&sock).status, Status::Ok);
        drop(listener); // the file stays: a killed daemon's socket
        let stale = check_plugin_socket(&sock);
        assert_eq!(stale.status, Status::Warn);
        assert!(stale.detail.contains("stale"), "{}", stale.detail);

        std::fs::remove_file(&sock).unwrap();
        std::fs::write(&sock, b"").unwrap();
        assert_eq!(check_plugin_socket(&sock).status, Status::Fail);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn docker_absent_or_stale_is_a_finding() {
        let dir = scratch("docker");
        let sock = dir.join("docker.sock");
        let absent = check_docker(&sock).await;
        assert_eq!(absent.status, Status::Fail);
        assert!(absent.detail.starts_with("no socket"), "{}", absent.detail);

        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        let stale = check_docker(&sock).await;
        assert_eq!(stale.status, Status::Fail);
        assert!(stale.detail.contains("stale"), "{}", stale.detail);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn docker_ping_reads_status_and_api_version() {
        let dir = scratch("ping");
        let sock = dir.join("docker.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut buf).await.unwrap();
                assert!(n > 0, "client hung up");
                req.extend_from_slice(&buf[..n]);
            }
            conn.write_all(b"HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\nContent-Length: 2\r\n\r\nOK")
                .await
                .unwrap();
            String::from_utf8(req).unwrap()
        });
        let c = check_docker(&sock).await;
        let req = server.await.unwrap();
        assert!(req.starts_with("GET /_ping HTTP/1.1\r\n"), "{req}");
        assert_eq!(c.status, Status::Ok, "{c:?}");
        assert!(c.detail.contains("API 1.41"), "{}", c.detail);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn sample() -> Vec<Check> {
        vec![
            Check::ok("root", "running as root"),
            Check::warn("datapath", "netdev only", "modprobe openvswitch"),
            Check::fail("local-port-range", "overlaps", "sysctl -w ..."),
        ]
    }

    #[test]
    fn renders_an_aligned_table_with_fixes_and_a_summary() {
        let table = render_table(&sample());
        let expected = "\
CHECK             STATUS  DETAIL
root              OK      running as root
datapath          WARN    netdev only
                          fix: modprobe openvswitch
local-port-range  FAIL    overlaps
                          fix: sysctl -w ...

1 OK, 1 WARN, 1 FAIL
";
        assert_eq!(table, expected);
    }

    #[test]
    fn renders_json_and_reports_failures() {
        let checks = sample();
        let v: serde_json::Value = serde_json::from_str(&render_json(&checks)).unwrap();
        assert_eq!(v[0]["check"], "root");
        assert_eq!(v[0]["status"], "OK");
        assert_eq!(v[0]["fix"], serde_json::Value::Null);
        assert_eq!(v[1]["status"], "WARN");
        assert_eq!(v[2]["status"], "FAIL");
        assert_eq!(v[2]["fix"], "sysctl -w ...");
        let back: Vec<Check> = serde_json::from_value(v).unwrap();
        assert_eq!(back, checks);

        assert!(has_failures(&checks));
        assert!(!has_failures(&checks[..2]));
    }
}
