//! The Internet checksum: from scratch (RFC 1071) and incremental updates (RFC 1624).
//!
//! Sums are carried unfolded in a `u32` between calls ([`sum`] folds its 64-bit
//! accumulator down to 32 bits, so chaining a handful of them cannot overflow), and
//! folded to 16 bits only at the end with [`fold`]. The checksum written into a header
//! is the ones' complement of the folded sum. [`fold`], [`update16`], [`update_sums`] and
//! [`is_partial`] come from `dovesnap_ebpf::checksum`, which the XDP program uses too.

use std::net::Ipv4Addr;

// The incremental arithmetic is the XDP program's own, so both rewrite a checksum to the
// same value.
pub use dovesnap_ebpf::checksum::{fold, is_partial, update16, update_sums};

/// Ones' complement sum of `data` as big-endian 16-bit words (an odd trailing byte is
/// padded with a zero byte on the right), added to `initial`. Not folded to 16 bits.
pub fn sum(data: &[u8], initial: u32) -> u32 {
    let mut acc = u64::from(initial);
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        acc += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        acc += u64::from(u16::from_be_bytes([*last, 0]));
    }
    // 64 -> 32 bits keeping the end-around carry: at most two rounds for any input.
    while acc >> 32 != 0 {
        acc = (acc & 0xffff_ffff) + (acc >> 32);
    }
    acc as u32
}

/// Adds two unfolded sums without losing a carry.
pub fn add(a: u32, b: u32) -> u32 {
    let (s, carry) = a.overflowing_add(b);
    s + u32::from(carry)
}

/// The checksum of `data` from scratch (RFC 1071): `!fold(sum(data))`.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data, 0))
}

/// The unfolded sum of the IPv4 pseudo-header used by TCP and UDP (RFC 793 / RFC 768):
/// source, destination, zero + protocol, L4 length.
pub fn pseudo_header_sum(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, l4_len: u16) -> u32 {
    let s = src.octets();
    let d = dst.octets();
    u32::from(u16::from_be_bytes([s[0], s[1]]))
        + u32::from(u16::from_be_bytes([s[2], s[3]]))
        + u32::from(u16::from_be_bytes([d[0], d[1]]))
        + u32::from(u16::from_be_bytes([d[2], d[3]]))
        + u32::from(protocol)
        + u32::from(l4_len)
}

/// RFC 1624 equation 3 for a run of words: `old` and `new` are the same field before and
/// after the change (same length, starting at an even offset of the checksummed data).
pub fn update(hc: u16, old: &[u8], new: &[u8]) -> u16 {
    debug_assert_eq!(old.len(), new.len());
    update_sums(hc, sum(old, 0), sum(new, 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dovesnap_testbed::rand::XorShift;

    /// RFC 1071 the slow, obvious way: 32-bit accumulate, fold, complement.
    fn reference(data: &[u8]) -> u16 {
        let mut acc: u64 = 0;
        let mut i = 0;
        while i < data.len() {
            let hi = u64::from(data[i]) << 8;
            let lo = data.get(i + 1).map_or(0, |b| u64::from(*b));
            acc += hi | lo;
            i += 2;
        }
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        !(acc as u16)
    }

    /// Verifying a buffer that contains its own checksum gives zero (ones' complement).
    fn verifies(data: &[u8]) -> bool {
        fold(sum(data, 0)) == 0xffff
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: the sum of 0001 f203 f4f5 f6f7 is ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data, 0)), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
        assert_eq!(checksum(&data), reference(&data));
    }

    #[test]
    fn from_scratch_matches_reference_on_random_data() {
        let mut rng = XorShift(0x1234_5678_9abc_def1);
        for len in 0..300 {
            let data: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            assert_eq!(checksum(&data), reference(&data), "len {len}");
        }
        // All-ones data: many carries.
        let ones = vec![0xff; 65535];
        assert_eq!(checksum(&ones), reference(&ones));
    }

    #[test]
    fn chained_sums_equal_one_sum() {
        let data: Vec<u8> = (0..=255u8).collect();
        let (a, b) = data.split_at(100);
        assert_eq!(fold(sum(b, sum(a, 0))), fold(sum(&data, 0)));
        assert_eq!(fold(add(sum(a, 0), sum(b, 0))), fold(sum(&data, 0)));
        assert_eq!(fold(add(u32::MAX, u32::MAX)), fold(0xffff_fffe + 1));
    }

    #[test]
    fn incremental_matches_recompute() {
        let mut rng = XorShift(0xdead_beef_cafe_f00d);
        for round in 0..5000 {
            let len = 2 * (4 + (rng.next_u64() % 40) as usize);
            let mut data: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            // Checksum field at offset 0..2, as in a header.
            data[0] = 0;
            data[1] = 0;
            let c = checksum(&data);
            data[..2].copy_from_slice(&c.to_be_bytes());
            assert!(verifies(&data));

            // Change a 16-bit word and a 32-bit field (even offsets past the checksum).
            let w = 2 + 2 * (rng.next_u64() as usize % ((len - 2) / 2));
            let old16 = u16::from_be_bytes([data[w], data[w + 1]]);
            let new16 = if round % 7 == 0 {
                0
            } else {
                rng.next_u64() as u16
            };
            data[w..w + 2].copy_from_slice(&new16.to_be_bytes());
            let c = update16(u16::from_be_bytes([data[0], data[1]]), old16, new16);
            data[..2].copy_from_slice(&c.to_be_bytes());
            assert!(verifies(&data), "round {round} after update16");

            let f = 2 + 2 * (rng.next_u64() as usize % ((len - 4) / 2));
            let old: [u8; 4] = data[f..f + 4].try_into().unwrap();
            let new: [u8; 4] = (rng.next_u64() as u32).to_be_bytes();
            data[f..f + 4].copy_from_slice(&new);
            let c = update(u16::from_be_bytes([data[0], data[1]]), &old, &new);
            data[..2].copy_from_slice(&c.to_be_bytes());
            assert!(verifies(&data), "round {round} after update");
            // The incremental result equals the recomputed one up to the sign of zero.
            data[..2].copy_from_slice(&[0, 0]);
            let fresh = checksum(&data);
            assert!(
                c == fresh || (c | fresh == 0xffff && c & fresh == 0),
                "{c:#x} vs {fresh:#x}"
            );
        }
    }

    #[test]
    fn pseudo_header_and_partial_detection() {
        let src = Ipv4Addr::new(10, 0, 0, 2);
        let dst = Ipv4Addr::new(192, 0, 2, 7);
        let p = pseudo_header_sum(src, dst, 17, 28);
        let bytes = [10, 0, 0, 2, 192, 0, 2, 7, 0, 17, 0, 28];
        assert_eq!(fold(p), fold(sum(&bytes, 0)));
        assert!(is_partial(fold(p), p));
        assert!(!is_partial(!fold(p), p));
        // 0x0000 and 0xffff are the same number.
        assert!(is_partial(0x0000, 0xffff));
        assert!(is_partial(0xffff, 0x0000_ffff));
    }
}
