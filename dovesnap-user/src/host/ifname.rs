//! Interface names, checked once by the kernel's rules and once more by the stricter
//! rule dovesnap applies to names users give it.

/// `IFNAMSIZ - 1`: the longest name the kernel accepts, in bytes.
pub const IFNAME_MAX: usize = 15;

/// Why a name is not one the kernel would accept (`dev_valid_name`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadIfName {
    #[error("must be a non-empty interface name")]
    Empty,
    #[error("interface names have at most 15 bytes")]
    TooLong,
    #[error("interface names cannot be \".\" or \"..\"")]
    Dot,
    #[error("interface names cannot contain '/', ':', NUL or whitespace")]
    Character,
}

/// Checks `name` the way the kernel does (`dev_valid_name`), before it reaches a
/// `CString`, an ioctl, netlink or OVSDB.
pub fn check(name: &str) -> Result<(), BadIfName> {
    if name.is_empty() {
        return Err(BadIfName::Empty);
    }
    if name.len() > IFNAME_MAX {
        return Err(BadIfName::TooLong);
    }
    if name == "." || name == ".." {
        return Err(BadIfName::Dot);
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
    {
        return Err(BadIfName::Character);
    }
    Ok(())
}

/// Whether `name` is a name dovesnap accepts from a user (`-o` options): what the
/// kernel accepts, narrowed to `[A-Za-z0-9_.-]` so that it is safe in every command
/// line, nft rule and OVSDB string it reaches.
pub fn is_plain(name: &str) -> bool {
    check(name).is_ok()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_rules() {
        for ok in [
            "eth0",
            "ovsbr-1234",
            "a",
            "x".repeat(15).as_str(),
            "br@x",
            "é",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
        assert_eq!(check(""), Err(BadIfName::Empty));
        assert_eq!(check(&"x".repeat(16)), Err(BadIfName::TooLong));
        assert_eq!(check(".."), Err(BadIfName::Dot));
        for bad in ["a/b", "a:1", "a b", "a\0", "tab\t"] {
            assert_eq!(check(bad), Err(BadIfName::Character), "{bad:?}");
        }
    }

    #[test]
    fn user_names_are_plain() {
        assert!(is_plain("ovs-br_1.2"));
        for bad in ["", ".", "..", "br@x", "é", "a b", &"x".repeat(16)] {
            assert!(!is_plain(bad), "{bad:?}");
        }
    }
}
