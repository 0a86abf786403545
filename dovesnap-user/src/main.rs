//! The `dovesnap` binary: the plugin daemon and the CLI verbs that talk to it.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tracing::info;

use dovesnap::daemon::control::{self, DEFAULT_CONTROL_SOCKET};
use dovesnap::daemon::metrics::DEFAULT_METRICS_ADDR;
use dovesnap::driver::Driver;
use dovesnap::firewall::NftFirewall;
use dovesnap::host::netlink::Netlink;
use dovesnap::ovsdb::{Ovsdb, Remote, DEFAULT_SOCKET as DEFAULT_OVSDB_SOCKET};
use dovesnap::plugin::server::{self, DEFAULT_PLUGIN_SOCKET};

#[derive(Parser)]
#[command(
    name = "dovesnap",
    version,
    about = "Docker network plugin on Open vSwitch (driver name `ovs`)",
    long_about = "Docker network plugin on Open vSwitch.\n\n\
        Run `dovesnap daemon` as root, then `docker network create -d ovs NAME`.\n\
        Log levels come from the RUST_LOG environment variable (default: info)."
)]
struct Cli {
    /// The daemon's control socket (used by `status`).
    #[arg(long, global = true, default_value = DEFAULT_CONTROL_SOCKET)]
    control_socket: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve Docker's remote network driver API (runs in the foreground).
    Daemon {
        /// Where Docker finds the plugin; the file name (minus .sock) is the driver name.
        #[arg(long, default_value = DEFAULT_PLUGIN_SOCKET)]
        socket: PathBuf,
        /// ovsdb-server's unix socket.
        #[arg(long, default_value = DEFAULT_OVSDB_SOCKET)]
        ovsdb: PathBuf,
        /// Serve Prometheus metrics on GET /metrics at this address (off unless given;
        /// the flag alone listens on 127.0.0.1:9477).
        #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = DEFAULT_METRICS_ADDR)]
        metrics: Option<std::net::SocketAddr>,
        /// Seconds between passes of the reconciler, which re-creates bridges, ports,
        /// veths and gateway addresses deleted behind the plugin's back (0: off).
        #[arg(long, value_name = "SECS", default_value_t = 5)]
        reconcile_interval: u64,
        /// Sessions each nat-fast uplink's translator holds; when full, the least recently
        /// seen transitory TCP or unanswered UDP/ICMP session is evicted, and new flows
        /// are dropped if there is none.
        #[arg(long, value_name = "N", default_value_t = dovesnap::fastpath::MAX_SESSIONS as u32,
              value_parser = clap::value_parser!(u32).range(1..=16_777_216))]
        nat_max_sessions: u32,
        /// Sessions one container may start through a nat-fast uplink (those through
        /// its published ports are not counted); at its limit, its own least recently
        /// seen evictable session makes room, else its new flow is dropped
        /// (`endpoint_session_limit`). Keeps one container from filling the table for
        /// the others. Default: no limit but --nat-max-sessions.
        #[arg(long, value_name = "N",
              value_parser = clap::value_parser!(u32).range(1..=16_777_216))]
        nat_max_sessions_per_endpoint: Option<u32>,
        /// External ports (and ICMP identifiers) nat-fast maps containers to, LO-HI
        /// within 1024-65535: the tc engine's slice (--nat-kernel-ports) and the
        /// translator's rest. The kernel masquerade of nat-fast networks (their fallback
        /// path) takes the larger rest of the unprivileged ports (32768-65535 by
        /// default), which must keep at least 1024 ports. The uplink steers a mapped
        /// port's replies by their exact remote, so host services listening on ports of
        /// this range keep their traffic; keep net.ipv4.ip_local_port_range (default
        /// 32768-60999) outside it.
        #[arg(long, value_name = "LO-HI", default_value = "1024-32767",
              value_parser = dovesnap::fastpath::parse_nat_ports)]
        nat_ports: std::ops::RangeInclusive<u16>,
        /// The slice of --nat-ports that the tc engine's programs (ovs.nat.engine=tc)
        /// claim ports from for the TCP sessions they create themselves, LO-HI at the top
        /// or bottom end of --nat-ports, leaving the translator at least 256 ports; the
        /// translator gets the rest. `none` (or 0): the programs create no session.
        /// Default: the upper half of --nat-ports (16384-32767 of the default 1024-32767).
        #[arg(long, value_name = "LO-HI|none",
              value_parser = dovesnap::fastpath::parse_kernel_ports)]
        nat_kernel_ports: Option<dovesnap::fastpath::KernelPorts>,
        /// External ports per protocol one container may map through the translator (its
        /// share of the translator's ports: --nat-ports less --nat-kernel-ports);
        /// at its share, its own least recently seen evictable session makes room, else
        /// its new flow is dropped (`endpoint_port_share`) while other containers still
        /// get ports. Default: 3/4 of the translator's ports.
        #[arg(long, value_name = "N",
              value_parser = clap::value_parser!(u32).range(1..=65535))]
        nat_ports_per_endpoint: Option<u32>,
        #[command(flatten)]
        ovn: OvnArgs,
        /// For the project's tests: SIGUSR1 makes the nat-fast data-plane thread panic,
        /// SIGUSR2 stalls it for 5 s (to exercise its supervision).
        #[arg(long, hide = true)]
        test_hooks: bool,
    },
    /// Show the daemon's networks and endpoints.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Check this host (OVS, datapath, XDP, AF_XDP, Docker, netfilter, ports) and say
    /// what to fix; exits with status 1 if any check fails.
    Doctor {
        /// Print a JSON array of {check, status, detail, fix} instead of a table.
        #[arg(long)]
        json: bool,
        /// ovsdb-server's unix socket.
        #[arg(long, default_value = DEFAULT_OVSDB_SOCKET)]
        ovsdb: PathBuf,
        /// Also check this OVN northbound database (default: as overlay networks
        /// find it, from this host's Open_vSwitch external_ids).
        #[arg(long, value_name = "REMOTE")]
        ovn_nb: Option<Remote>,
        /// The daemon's --nat-ports, which the host's port ranges are checked against.
        #[arg(long, value_name = "LO-HI", default_value = "1024-32767",
              value_parser = dovesnap::fastpath::parse_nat_ports)]
        nat_ports: std::ops::RangeInclusive<u16>,
    },
}

/// Overlay mode (OVN) settings of the daemon.
#[derive(clap::Args)]
struct OvnArgs {
    /// The OVN northbound database of overlay networks (`tcp:HOST:6641` or
    /// `unix:PATH`); a network's `-o ovs.ovn.nb` wins. Default: this host's
    /// external_ids:ovn-nb, else the host of external_ids:ovn-remote at port 6641.
    #[arg(long, value_name = "REMOTE")]
    ovn_nb: Option<Remote>,
    /// This host's tunnel endpoint address, written to external_ids:ovn-encap-ip
    /// (where ovn-controller reads it) at start. Default: leave it as set.
    #[arg(long, value_name = "IP")]
    ovn_encap_ip: Option<std::net::IpAddr>,
    /// Seconds a chassis must have been missing from the southbound database before
    /// this host removes its logical ports and switch references (a host that died and
    /// was removed from OVN). Guards against a southbound answer that briefly lacks a
    /// live host (ovn-controller restarting, a database failover); 0 reaps at once.
    #[arg(long, value_name = "SECS", default_value_t = dovesnap::ovn::reap::DEFAULT_REAP_AFTER.as_secs())]
    ovn_reap_after: u64,
    /// Where the forwarder behind each overlay switch's DNS address (169.254.53.53)
    /// sends the queries OVN does not answer (repeatable, tried in order). Default: the
    /// IPv4 `nameserver`s of this host's /etc/resolv.conf, read at start.
    #[arg(long, value_name = "ADDR:PORT")]
    dns_upstream: Vec<std::net::SocketAddr>,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new().context("cannot start the tokio runtime")?;
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Daemon {
                socket,
                ovsdb,
                metrics,
                reconcile_interval,
                nat_max_sessions,
                nat_max_sessions_per_endpoint,
                nat_ports,
                nat_kernel_ports,
                nat_ports_per_endpoint,
                ovn,
                test_hooks,
            } => {
                let fast = dovesnap::fastpath::FastPathConfig::new(
                    nat_ports,
                    nat_kernel_ports,
                    nat_ports_per_endpoint.map(|n| n as usize),
                    nat_max_sessions as usize,
                    nat_max_sessions_per_endpoint.map(|n| n as usize),
                )
                .map_err(anyhow::Error::msg)?;
                daemon(Settings {
                    socket,
                    ovsdb,
                    control_socket: cli.control_socket,
                    metrics,
                    reconcile_interval,
                    ovn,
                    fast,
                    test_hooks,
                })
                .await
            }
            Cmd::Status { json } => {
                let status = control::fetch_status(&cli.control_socket).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&status)?);
                } else {
                    print!("{}", dovesnap::daemon::status::render_status_table(&status));
                }
                Ok(())
            }
            Cmd::Doctor {
                json,
                ovsdb,
                ovn_nb,
                nat_ports,
            } => {
                use dovesnap::doctor;
                let opts = doctor::Options {
                    ovsdb,
                    ovn_nb,
                    nat_ports,
                    ..doctor::Options::default()
                };
                let checks = doctor::run(&opts).await;
                if json {
                    println!("{}", doctor::render_json(&checks));
                } else {
                    print!("{}", doctor::render_table(&checks));
                }
                if doctor::has_failures(&checks) {
                    std::io::Write::flush(&mut std::io::stdout())?;
                    std::process::exit(1);
                }
                Ok(())
            }
        }
    })
}

/// What `dovesnap daemon` runs with, checked.
struct Settings {
    socket: PathBuf,
    ovsdb: PathBuf,
    control_socket: PathBuf,
    metrics: Option<std::net::SocketAddr>,
    reconcile_interval: u64,
    ovn: OvnArgs,
    fast: dovesnap::fastpath::FastPathConfig,
    test_hooks: bool,
}

async fn daemon(settings: Settings) -> Result<()> {
    let Settings {
        socket,
        ovsdb,
        control_socket,
        metrics,
        reconcile_interval,
        ovn,
        fast,
        test_hooks,
    } = settings;
    let ovs = Ovsdb::connect(&ovsdb).await?;
    if let Some(ip) = ovn.ovn_encap_ip {
        ovs.set_switch_external_id(dovesnap::ovn::EXT_ENCAP_IP, Some(&ip.to_string()))
            .await
            .context("cannot set external_ids:ovn-encap-ip")?;
    }
    let upstreams = match ovn.dns_upstream.as_slice() {
        [] => dovesnap::ovn::dns_forward::nameservers(
            &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        ),
        given => given.to_vec(),
    };
    let dns_forwarders = Arc::new(dovesnap::ovn::dns_forward::Forwarders::new(upstreams));
    info!(upstreams = ?dns_forwarders.upstreams(), "DNS forwarder upstreams");
    let forwarders = dns_forwarders.clone();
    let netlink = Netlink::new()?;
    let firewall = NftFirewall::new();
    if let Err(e) = firewall.probe() {
        tracing::warn!("nat networks will not work: {e}");
    }
    // Versions before IPv6 support kept their rules in `ip dovesnap`: the driver's
    // recovery puts them back in `inet dovesnap`.
    match firewall.remove_legacy_table() {
        Ok(true) => tracing::info!("deleted the old nft table ip dovesnap (now inet dovesnap)"),
        Ok(false) => {}
        Err(e) => tracing::warn!("cannot delete the old nft table ip dovesnap: {e}"),
    }
    let driver = Arc::new(
        Driver::new(ovs, netlink, Box::new(firewall))
            .with_ovn_northbound(ovn.ovn_nb)
            .with_ovn_reap_after(std::time::Duration::from_secs(ovn.ovn_reap_after))
            .with_names_source(Arc::new(dovesnap::ovn::docker_names::DockerNames {
                socket: dovesnap::doctor::DEFAULT_DOCKER_SOCKET.into(),
            }))
            .with_dns_forwarders(dns_forwarders)
            .with_fastpath_config(fast),
    );
    let (networks, endpoints) = driver
        .recover()
        .await
        .context("cannot read dovesnap's bridges back from OVSDB")?;
    info!(networks, endpoints, "recovered state from OVSDB");

    let plugin = server::bind_plugin_socket(&socket)
        .with_context(|| format!("cannot listen on {}", socket.display()))?;
    let control = control::bind_control_socket(&control_socket)
        .with_context(|| format!("cannot listen on {}", control_socket.display()))?;
    let alias = server::link_alias(&socket);
    info!(socket = %socket.display(), control = %control_socket.display(), "dovesnap serving");

    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
    };
    let (tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut rx1 = tx.subscribe();
    let mut rx2 = tx.subscribe();
    let metrics_task = match metrics {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for metrics on {addr}"))?;
            info!(%addr, "serving Prometheus metrics on /metrics");
            let mut rx3 = tx.subscribe();
            Some(tokio::spawn(dovesnap::daemon::metrics::serve_metrics(
                listener,
                driver.clone(),
                async move {
                    let _ = rx3.recv().await;
                },
            )))
        }
        None => None,
    };
    let plugin_task = tokio::spawn(server::serve(plugin, driver.clone(), async move {
        let _ = rx1.recv().await;
    }));
    let control_task = tokio::spawn(control::serve_control(
        control,
        driver.clone(),
        async move {
            let _ = rx2.recv().await;
        },
    ));
    let reconcile_task = (reconcile_interval > 0).then(|| {
        let driver = driver.clone();
        let mut stop = tx.subscribe();
        let every = std::time::Duration::from_secs(reconcile_interval);
        tokio::spawn(async move {
            // A failed pass (panic, or stuck past the limit) is retried after a backoff
            // that doubles up to a minute and resets after a good pass.
            let limit = std::time::Duration::from_secs(60);
            let mut wait = every;
            loop {
                tokio::select! {
                    _ = stop.recv() => break,
                    _ = tokio::time::sleep(wait) => {
                        wait = if driver.reconcile_supervised(limit).await {
                            every
                        } else {
                            (wait * 2).min(std::time::Duration::from_secs(60))
                        };
                    }
                }
            }
        })
    });
    let hooks_task = test_hooks.then(|| {
        tracing::warn!("test hooks on: SIGUSR1 panics the nat-fast data plane, SIGUSR2 stalls it");
        let driver = driver.clone();
        let mut stop = tx.subscribe();
        tokio::spawn(async move {
            use dovesnap::fastpath::Fault;
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut usr1), Ok(mut usr2)) = (
                signal(SignalKind::user_defined1()),
                signal(SignalKind::user_defined2()),
            ) else {
                return;
            };
            loop {
                let fault = tokio::select! {
                    _ = stop.recv() => break,
                    _ = usr1.recv() => Fault::Panic,
                    _ = usr2.recv() => Fault::Stall(std::time::Duration::from_secs(5)),
                };
                if !driver.inject_fault(fault) {
                    tracing::warn!("test hook: no nat-fast data plane to fail");
                }
            }
        })
    });
    shutdown.await;
    forwarders.shutdown().await;
    info!(
        "shutting down: XDP detached; bridges, ports and nat rules stay (containers keep working)"
    );
    let _ = tx.send(());
    let _ = plugin_task.await;
    let _ = control_task.await;
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    if let Some(t) = reconcile_task {
        let _ = t.await;
    }
    if let Some(t) = hooks_task {
        let _ = t.await;
    }
    if let Err(e) = driver.shutdown().await {
        tracing::warn!("unclean shutdown: {e}");
    }
    let _ = std::fs::remove_file(&socket);
    if let Some(alias) = alias {
        server::unlink_alias(&alias);
    }
    let _ = std::fs::remove_file(&control_socket);
    Ok(())
}
