//! `BPF_MAP_LOOKUP_BATCH` (Linux 5.6+) through bpf(2): a whole hash map read in a few
//! syscalls, where aya 0.14's iterator (which has no batch call) costs two per entry.
//! The `CT` sweep reads up to a million entries a second with it.

use std::io;
use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::maps::{HashMap, IterableMap as _, MapData};
use aya::Pod;

/// `enum bpf_cmd` (include/uapi/linux/bpf.h).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// Entries asked for per call.
const CHUNK: usize = 4096;

/// The `batch` member of `union bpf_attr`; the kernel zero-fills the rest of the union.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// The entries of `map` (at least `limit` of them when it holds more: whole chunks are
/// read). An entry changed during the read may be seen old or new; one inserted during
/// it may be missed. Fails on a kernel without batch operations (EINVAL).
pub(super) fn lookup_all<K: Pod + Default, V: Pod + Default>(
    map: &HashMap<MapData, K, V>,
    limit: usize,
) -> io::Result<Vec<(K, V)>> {
    let fd = map.map().fd().as_fd().as_raw_fd();
    let mut out = Vec::new();
    let mut keys = vec![K::default(); CHUNK];
    let mut values = vec![V::default(); CHUNK];
    // Where the next call starts: a hash map's bucket index (a u32); room to spare.
    let mut token_in = [0u64; 4];
    let mut token_out = [0u64; 4];
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token_in.as_ptr() as u64 },
            out_batch: token_out.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: fd as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` is a live `bpf_attr` prefix of the size passed. `keys` and
        // `values` hold CHUNK elements of `K` and `V`, whose sizes are the map's key and
        // value sizes (aya checked them when `map` was typed), and the kernel writes at
        // most `count` (= CHUNK) of each; `K` and `V` are `Pod`, so any bytes it writes
        // are valid values. The tokens are 32 bytes, more than the 4 a hash map writes.
        // `fd` is `map`'s open descriptor, borrowed for the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        let err = (r < 0).then(io::Error::last_os_error);
        let n = (attr.count as usize).min(CHUNK);
        out.extend(keys[..n].iter().copied().zip(values[..n].iter().copied()));
        match err {
            None if out.len() < limit => {}
            None => return Ok(out),
            // ENOENT: no more entries (this call may still have returned some).
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            Some(e) => return Err(e),
        }
        token_in = token_out;
        first = false;
    }
}
