//! Hand-written netlink messages, for the two families the rtnetlink crates do not
//! speak: `netdev` (generic netlink, [`crate::host::netdev`]) and ctnetlink
//! (`fastpath::conntrack`). Both put a 4-byte family header after `nlmsghdr`
//! (`genlmsghdr` or `nfgenmsg`), so one builder serves both.

use std::io;

pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
/// Set on the type of an attribute that holds attributes.
pub const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// Appends attributes (type, value), each padded to 4 bytes.
pub fn put_attrs(m: &mut Vec<u8>, attrs: &[(u16, &[u8])]) {
    for (ty, value) in attrs {
        let len = 4 + value.len();
        m.extend_from_slice(&(len as u16).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(value);
        m.resize(m.len().next_multiple_of(4), 0);
    }
}

/// The value of a nested attribute: its children, encoded.
pub fn nest(attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut v = Vec::new();
    put_attrs(&mut v, attrs);
    v
}

/// A netlink message: header (sequence 1), the family's 4-byte header, attributes.
pub fn message(kind: u16, flags: u16, family_header: [u8; 4], attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut m = vec![0u8; 16];
    m.extend_from_slice(&family_header);
    put_attrs(&mut m, attrs);
    let total = m.len() as u32;
    m[0..4].copy_from_slice(&total.to_ne_bytes());
    m[4..6].copy_from_slice(&kind.to_ne_bytes());
    m[6..8].copy_from_slice(&flags.to_ne_bytes());
    m[8..12].copy_from_slice(&1u32.to_ne_bytes());
    m
}

/// The attributes of the first message of `reply`, or the error it carries. An
/// acknowledgement (an error message with code 0) has no attributes.
pub fn attributes(reply: &[u8]) -> io::Result<Vec<(u16, &[u8])>> {
    let short = || io::Error::new(io::ErrorKind::InvalidData, "short netlink reply");
    let len = u32::from_ne_bytes(reply.get(0..4).ok_or_else(short)?.try_into().unwrap()) as usize;
    let kind = u16::from_ne_bytes(reply.get(4..6).ok_or_else(short)?.try_into().unwrap());
    let msg = reply.get(..len).ok_or_else(short)?;
    if kind == NLMSG_ERROR {
        let code = i32::from_ne_bytes(msg.get(16..20).ok_or_else(short)?.try_into().unwrap());
        if code == 0 {
            return Ok(Vec::new());
        }
        return Err(io::Error::from_raw_os_error(-code));
    }
    Ok(nested(msg.get(20..).ok_or_else(short)?))
}

/// The attributes in `bytes` (a message's payload after its family header, or a nested
/// attribute's value); a truncated one ends the walk.
pub fn nested(bytes: &[u8]) -> Vec<(u16, &[u8])> {
    let mut attrs = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 4 {
        let alen = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let ty = u16::from_ne_bytes([rest[2], rest[3]]) & NLA_TYPE_MASK;
        if alen < 4 || alen > rest.len() {
            break;
        }
        attrs.push((ty, &rest[4..alen]));
        rest = &rest[alen.next_multiple_of(4).min(rest.len())..];
    }
    attrs
}

/// Splits a buffer the kernel sent into its messages.
pub fn messages(buf: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = buf;
    while rest.len() >= 16 {
        let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap()) as usize;
        if len < 16 || len > rest.len() {
            break;
        }
        out.push(&rest[..len]);
        rest = &rest[len.next_multiple_of(4).min(rest.len())..];
    }
    out
}

/// A message's type (`nlmsg_type`).
pub fn kind(msg: &[u8]) -> u16 {
    msg.get(4..6)
        .map_or(0, |b| u16::from_ne_bytes([b[0], b[1]]))
}

/// A netlink socket (rtnetlink's own netlink-sys socket), connected to the kernel.
pub struct Socket(rtnetlink::sys::Socket);

impl Socket {
    /// Opens a socket of `protocol` (`rtnetlink::sys::protocols::*`) in the calling
    /// thread's network namespace.
    pub fn open(protocol: isize) -> io::Result<Socket> {
        let sock = rtnetlink::sys::Socket::new(protocol)?;
        sock.connect(&rtnetlink::sys::SocketAddr::new(0, 0))?;
        Ok(Socket(sock))
    }

    /// Sends one request to the kernel and returns its first reply (the kernel queues
    /// the reply, or the acknowledgement asked for, before the send returns).
    pub fn request(&self, msg: &[u8]) -> io::Result<Vec<u8>> {
        self.0.send(msg, 0)?;
        let mut buf = Vec::with_capacity(8192);
        self.0.recv(&mut buf, 0)?;
        Ok(buf)
    }

    /// Sends a dump request and calls `each` with every message of the answer until
    /// the kernel says it is done (or reports an error).
    pub fn dump(&self, msg: &[u8], mut each: impl FnMut(&[u8])) -> io::Result<()> {
        self.0.send(msg, 0)?;
        loop {
            // The kernel fills at most a page or two per read of a dump.
            let mut buf = Vec::with_capacity(65536);
            self.0.recv(&mut buf, 0)?;
            for m in messages(&buf) {
                match kind(m) {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => return attributes(m).map(|_| ()),
                    _ => each(m),
                }
            }
        }
    }
}
