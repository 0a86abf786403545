//! Named network namespaces, kept the way `ip netns` keeps them: the namespace
//! bind-mounted on `/run/netns/NAME`, so that it outlives the thread that made it and
//! `ip netns` lists, enters and deletes it like one of its own.
//!
//! `unshare` and `setns` change the calling thread only. Each switch happens on a
//! thread made for the call, which ends with it: a thread of tokio's pools would carry
//! the namespace into whatever task ran there next.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Where named namespaces live (iproute2's `NETNS_RUN_DIR`).
pub const NETNS_DIR: &str = "/run/netns";

/// The longest name, in bytes (a file name: `NAME_MAX`).
const NAME_MAX: usize = 255;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error(
        "`{0}` is not a network namespace name: 1 to 255 bytes, no `/` or NUL, not `.` or `..`"
    )]
    BadName(String),
    #[error(
        "network namespace {0} already exists ({NETNS_DIR}/{0}); `ip netns del {0}` removes it"
    )]
    Exists(String),
    #[error("network namespace {0} does not exist ({NETNS_DIR}/{0})")]
    Missing(String),
    #[error("cannot {action} network namespace {name}: {source} (dovesnap needs root)")]
    Io {
        action: &'static str,
        name: String,
        source: io::Error,
    },
    #[error("the thread working in network namespace {0} panicked")]
    Panicked(String),
}

impl NetnsError {
    fn io<'a>(action: &'static str, name: &'a str) -> impl FnOnce(io::Error) -> Self + 'a {
        move |source| NetnsError::Io {
            action,
            name: name.to_string(),
            source,
        }
    }
}

/// Checks `name` as `ip netns` does: a file name of [`NETNS_DIR`].
pub fn check_name(name: &str) -> Result<(), NetnsError> {
    let ok = !name.is_empty()
        && name.len() <= NAME_MAX
        && name != "."
        && name != ".."
        && !name.contains(['/', '\0']);
    ok.then_some(())
        .ok_or_else(|| NetnsError::BadName(name.to_string()))
}

/// The file namespace `name` is mounted on.
pub fn path(name: &str) -> Result<PathBuf, NetnsError> {
    check_name(name)?;
    Ok(Path::new(NETNS_DIR).join(name))
}

/// Whether namespace `name` exists (its file does).
pub fn exists(name: &str) -> bool {
    path(name).is_ok_and(|p| p.exists())
}

/// Opens namespace `name` (for `setns`, or to move a link into it).
pub fn open(name: &str) -> Result<File, NetnsError> {
    File::open(path(name)?).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => NetnsError::Missing(name.to_string()),
        _ => NetnsError::io("open", name)(e),
    })
}

/// Makes namespace `name` (`ip netns add NAME`): a new network namespace, holding only
/// a loopback device that is down, mounted on its file. Fails when it exists.
pub async fn add(name: &str) -> Result<(), NetnsError> {
    let file = path(name)?;
    let owned = name.to_string();
    // The thread unshares: it must be one of its own.
    on_own_thread(name, move || add_on_this_thread(&owned, &file)).await?
}

/// [`add`]'s work, on a thread that ends afterwards (it is left in the new namespace).
fn add_on_this_thread(name: &str, file: &Path) -> Result<(), NetnsError> {
    std::fs::create_dir_all(NETNS_DIR).map_err(NetnsError::io("make the folder of", name))?;
    share_netns_dir().map_err(NetnsError::io("share the mounts of the folder of", name))?;
    // A placeholder, readable by nobody, that the namespace is mounted on.
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o000)
        .open(file);
    match created {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(NetnsError::Exists(name.to_string()))
        }
        Err(e) => return Err(NetnsError::io("make the file of", name)(e)),
    }
    // SAFETY: unshare(2) with a constant flag; it moves this thread (made for this
    // call) into a new network namespace and touches no memory of ours.
    let made = if unsafe { libc::unshare(libc::CLONE_NEWNET) } == 0 {
        mount(
            Some(Path::new("/proc/thread-self/ns/net")),
            file,
            libc::MS_BIND,
        )
    } else {
        Err(io::Error::last_os_error())
    };
    if let Err(e) = made {
        let _ = std::fs::remove_file(file);
        return Err(NetnsError::io("make", name)(e));
    }
    Ok(())
}

/// Makes [`NETNS_DIR`] a shared mount, as `ip netns add` does, so that a namespace
/// mounted or unmounted in one mount namespace is in all of them: a bind mount on
/// itself first when it is not a mount point.
fn share_netns_dir() -> io::Result<()> {
    let dir = Path::new(NETNS_DIR);
    match mount(None, dir, libc::MS_SHARED | libc::MS_REC) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            mount(Some(dir), dir, libc::MS_BIND | libc::MS_REC)?;
            mount(None, dir, libc::MS_SHARED | libc::MS_REC)
        }
        other => other,
    }
}

/// mount(2) of `source` (none: a change of propagation) on `target`, no file system
/// type or data.
fn mount(source: Option<&Path>, target: &Path, flags: libc::c_ulong) -> io::Result<()> {
    let cstr = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other);
    let source = source.map(cstr).transpose()?.unwrap_or_default();
    let target = cstr(target)?;
    // SAFETY: every pointer is a NUL-terminated string that lives across the call;
    // data is null, which mount(2) allows.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            c"none".as_ptr(),
            flags,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Deletes namespace `name` (`ip netns del NAME`): unmounts (lazily: whatever is still
/// in it goes once the last user leaves) and removes its file. Returns whether it
/// existed.
pub async fn delete(name: &str) -> Result<bool, NetnsError> {
    let file = path(name)?;
    tokio::task::spawn_blocking(move || unmount_and_remove(&file))
        .await
        .map_err(|_| NetnsError::Panicked(name.to_string()))?
        .map_err(NetnsError::io("delete", name))
}

/// [`delete`]'s work: whether the file was there.
fn unmount_and_remove(file: &Path) -> io::Result<bool> {
    let target = CString::new(file.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: a NUL-terminated path that lives across the call. Its failure is
    // ignored, as `ip netns del` does: a file that is no mount here (e.g. made in
    // another mount namespace) is only removed.
    unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    match std::fs::remove_file(file) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Runs `f` in namespace `name`, on a thread of its own that enters it and ends
/// afterwards; what `f` opens there (sockets) stays in the namespace. The thread is
/// inside the caller's tokio runtime, so that `f` may make sockets that runtime serves
/// (a [`super::netlink::Netlink`] of the namespace, a `tokio` socket).
pub async fn run_in<T, F>(name: &str, f: F) -> Result<T, NetnsError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let ns = open(name)?;
    let runtime = tokio::runtime::Handle::try_current().ok();
    let owned = name.to_string();
    on_own_thread(name, move || {
        // SAFETY: setns(2) on a descriptor `ns` keeps open across the call; it changes
        // the namespace of this thread only, made for this call.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(NetnsError::io("enter", &owned)(io::Error::last_os_error()));
        }
        let _runtime = runtime.as_ref().map(tokio::runtime::Handle::enter);
        Ok(f())
    })
    .await?
}

/// Runs `f` on a new thread and waits for it without blocking the runtime.
async fn on_own_thread<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NetnsError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("dovesnap-netns".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(NetnsError::io("start a thread for", name))?;
    rx.await.map_err(|_| NetnsError::Panicked(name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_file_names() {
        for good in ["dsdns-0a1b2c3d", "a", "with.dot", &"x".repeat(255)] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "../etc", "nul\0", &"x".repeat(256)] {
            let err = check_name(bad).unwrap_err();
            assert!(
                matches!(&err, NetnsError::BadName(n) if n == bad),
                "{bad:?}: {err}"
            );
        }
        assert_eq!(path("ns1").unwrap(), Path::new("/run/netns/ns1"));
        assert!(path("../x").is_err());
    }

    #[tokio::test]
    async fn bad_and_missing_names_are_refused_before_any_syscall() {
        assert!(matches!(add("a/b").await, Err(NetnsError::BadName(_))));
        assert!(matches!(delete("..").await, Err(NetnsError::BadName(_))));
        assert!(matches!(
            run_in("", || ()).await,
            Err(NetnsError::BadName(_))
        ));
        let missing = "dovesnap-unit-test-no-such-namespace";
        assert!(matches!(open(missing), Err(NetnsError::Missing(_))));
        assert!(matches!(
            run_in(missing, || ()).await,
            Err(NetnsError::Missing(_))
        ));
        assert!(!exists(missing));
    }

    /// The whole life of a namespace, as root (`cargo test -p dovesnap-user --
    /// --ignored netns`): made, refused a second time, entered (a socket and a netlink
    /// handle opened inside see only its own links and loopback), deleted, and found
    /// missing when deleted again.
    #[tokio::test]
    #[ignore = "needs root"]
    async fn add_enter_delete() {
        let name = format!("dovesnap-unit-{}", std::process::id());
        add(&name).await.unwrap();
        let fixture = Guard(name.clone());
        assert!(exists(&name));
        assert!(matches!(add(&name).await, Err(NetnsError::Exists(_))));
        let inside = run_in(&name, super::super::netlink::Netlink::new)
            .await
            .unwrap()
            .unwrap();
        assert!(inside.exists("lo").await.unwrap());
        assert_eq!(inside.index("lo").await.unwrap(), Some(1));
        inside.set_up("lo").await.unwrap();
        let sock = run_in(&name, || std::net::UdpSocket::bind("127.0.0.1:0"))
            .await
            .unwrap()
            .unwrap();
        // The host's loopback does not reach the namespace's.
        let host = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        host.send_to(b"x", sock.local_addr().unwrap()).unwrap();
        sock.set_read_timeout(Some(std::time::Duration::from_millis(200)))
            .unwrap();
        assert!(sock.recv(&mut [0; 4]).is_err());
        // An on-link route out of a veth inside (the DNS forwarder's), once.
        inside
            .create_veth("dsunit0", "dsunit1", None, None)
            .await
            .unwrap();
        let net: super::super::addr::Ipv4Net = "10.99.0.0/24".parse().unwrap();
        inside.add_link_route(net, "dsunit0").await.unwrap();
        assert!(
            inside.add_link_route(net, "dsunit0").await.is_err(),
            "exists"
        );
        assert!(delete(&name).await.unwrap());
        assert!(!exists(&name));
        assert!(!delete(&name).await.unwrap());
        drop(fixture);
    }

    /// Deletes the namespace also when the test fails.
    struct Guard(String);

    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = unmount_and_remove(&path(&self.0).unwrap());
        }
    }
}
