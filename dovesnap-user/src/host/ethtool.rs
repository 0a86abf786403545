//! Legacy ethtool and interface ioctls (`SIOCETHTOOL`, `SIOCGIFMTU`): the offload
//! settings dovesnap sets on veths, an interface's queue count and MTU. Each asks in the
//! calling thread's network namespace.

/// An ethtool command that failed on an interface.
#[derive(Debug, thiserror::Error)]
#[error("cannot {what} on {name}: {source}")]
pub struct EthtoolError {
    pub what: &'static str,
    pub name: String,
    pub source: std::io::Error,
}

/// Turns off transmit checksum offload on `name` (ethtool's legacy `ETHTOOL_STXCSUM`,
/// which clears every TX checksum feature and with them TSO).
///
/// A veth peer with checksum offload on hands frames with only a partial checksum to
/// whatever reads its host end; OVS's userspace datapath and AF_XDP forward those
/// bytes as they are and the receiver drops them. Set on the container end before
/// Docker moves it, the setting stays with the interface.
pub fn disable_tx_checksum(name: &str) -> Result<(), EthtoolError> {
    const ETHTOOL_STXCSUM: u32 = 0x17;
    ethtool_set(
        name,
        "turn off transmit checksum offload",
        ETHTOOL_STXCSUM,
        0,
    )
}

/// Turns on generic receive offload on `name` (ethtool's legacy `ETHTOOL_SGRO`).
///
/// On a veth this also gives the interface its NAPI receive queues, which is what lets
/// XDP programs redirect frames to its peer (`ndo_xdp_xmit`): nat-fast's offloaded
/// sessions are delivered to a container that way. The kernel marks the peer as a
/// redirect target only when GRO is turned on while the interface is up, so the caller
/// sets it up first (see the driver's CreateEndpoint).
pub fn enable_gro(name: &str) -> Result<(), EthtoolError> {
    const ETHTOOL_SGRO: u32 = 0x2c;
    ethtool_set(name, "turn on GRO", ETHTOOL_SGRO, 1)
}

/// One legacy ethtool "set value" command (`struct ethtool_value`) on `name`.
fn ethtool_set(name: &str, what: &'static str, cmd: u32, data: u32) -> Result<(), EthtoolError> {
    let mut value = [cmd, data];
    ethtool(name, what, &mut value)
}

/// The number of receive queues of `name` (`ETHTOOL_GCHANNELS`: rx plus combined
/// channels), asked in the calling thread's network namespace; `None` if the driver
/// does not say.
pub fn rx_queue_count(name: &str) -> Option<u32> {
    const ETHTOOL_GCHANNELS: u32 = 0x3c;
    // struct ethtool_channels: cmd, max_rx, max_tx, max_other, max_combined, rx_count,
    // tx_count, other_count, combined_count.
    let mut ch = [0u32; 9];
    ch[0] = ETHTOOL_GCHANNELS;
    ethtool(name, "read the channel counts", &mut ch).ok()?;
    let n = ch[5] + ch[8];
    (n > 0).then_some(n)
}

/// The MTU of `name` (`SIOCGIFMTU`), in the calling thread's network namespace.
pub fn mtu(name: &str) -> Option<u32> {
    let mut ifr = ifreq_for(name).ok()?;
    with_socket(|fd| {
        // SAFETY: `ifr` names the interface (NUL-terminated); SIOCGIFMTU writes the MTU
        // into its union.
        unsafe { ifreq_ioctl(fd, libc::SIOCGIFMTU, &mut ifr) }
    })
    .ok()?;
    // SAFETY: SIOCGIFMTU succeeded, so the union holds `ifru_mtu`.
    u32::try_from(unsafe { ifr.ifr_ifru.ifru_mtu }).ok()
}

/// `ioctl(fd, request, ifr)`, its -1 turned into the OS error.
///
/// # Safety
/// `ifr` must be what `request` expects: a NUL-terminated name and, for requests that
/// follow a pointer in its union, a pointer to a live buffer of the request's size.
unsafe fn ifreq_ioctl(fd: i32, request: libc::Ioctl, ifr: &mut libc::ifreq) -> std::io::Result<()> {
    // SAFETY: the caller upholds what `request` needs of `ifr`; `fd` is a socket.
    if unsafe { libc::ioctl(fd, request, ifr as *mut libc::ifreq) } < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// An `ifreq` naming `name`.
fn ifreq_for(name: &str) -> std::io::Result<libc::ifreq> {
    if crate::host::ifname::check(name).is_err() {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(ifr)
}

/// Runs `f` with a fresh AF_INET datagram socket (in the calling thread's namespace).
fn with_socket<T>(f: impl FnOnce(i32) -> std::io::Result<T>) -> std::io::Result<T> {
    // SAFETY: a plain socket(2) call; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let r = f(fd);
    // SAFETY: `fd` is the socket opened above and closed once.
    unsafe { libc::close(fd) };
    r
}

/// A legacy ethtool command on `name`; `data` is the command's struct as `u32` words,
/// the command number first.
fn ethtool(name: &str, what: &'static str, data: &mut [u32]) -> Result<(), EthtoolError> {
    let err = |source| EthtoolError {
        what,
        name: name.into(),
        source,
    };
    let mut ifr = ifreq_for(name).map_err(err)?;
    ifr.ifr_ifru.ifru_data = data.as_mut_ptr().cast();
    with_socket(|fd| {
        // SAFETY: `ifr` names the interface (NUL-terminated) and points at `data`, a
        // buffer of the size the command's struct has, which outlives the call.
        unsafe { ifreq_ioctl(fd, libc::SIOCETHTOOL, &mut ifr) }
    })
    .map_err(err)
}
