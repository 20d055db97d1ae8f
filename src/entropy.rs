//! Where the process gets its randomness: seeds for event keys (ULIDs) and
//! retry jitter.
//!
//! Owns the order of sources and the error when there is none. First the
//! `getrandom` system call, made directly; then reading `/dev/urandom`.
//! Nothing here ever opens `/dev/random`. `rand`'s thread generator seeds
//! itself through the `getrandom` crate, and in a statically linked glibc
//! build that crate cannot find the system call (it looks the libc wrapper
//! up with `dlsym`, which finds nothing in a static binary). It then polls
//! `/dev/random` before it reads `/dev/urandom`, so in a root without
//! `/dev/random` the first event panicked. Callers seed their own generators
//! from [`seed`] at start, so a missing source stops the server at start,
//! with this module's error, and never on an event.

use std::io::Read as _;

/// Neither source could be read.
#[derive(Debug, thiserror::Error)]
#[error(
    "no source of randomness: the getrandom system call failed ({syscall}) and /dev/urandom cannot be read ({file})"
)]
pub struct Unavailable {
    syscall: std::io::Error,
    file: std::io::Error,
}

/// 32 random bytes, enough to seed any generator in `rand`.
pub fn seed() -> Result<[u8; 32], Unavailable> {
    let mut seed = [0u8; 32];
    let syscall = match from_syscall(&mut seed) {
        Ok(()) => return Ok(seed),
        Err(e) => e,
    };
    // The system call is missing on kernels before 3.17 and may be refused
    // by a seccomp filter; the device is the classic fallback. Its output is
    // weak only before the kernel's pool is first seeded, which matters for
    // secret keys, not for the ids and jitter drawn from these seeds.
    match std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut seed)) {
        Ok(()) => Ok(seed),
        Err(file) => Err(Unavailable { syscall, file }),
    }
}

/// Fills `buf` with the `getrandom` system call, made directly rather than
/// through libc, so it works the same in a static binary.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn from_syscall(mut buf: &mut [u8]) -> std::io::Result<()> {
    use rustix::rand::{GetRandomFlags, getrandom};
    while !buf.is_empty() {
        match getrandom(&mut *buf, GetRandomFlags::empty()) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = buf.get_mut(n..).ok_or(std::io::ErrorKind::InvalidData)?;
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Elsewhere the `getrandom` crate picks the system's own source.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn from_syscall(buf: &mut [u8]) -> std::io::Result<()> {
    use rand::TryRngCore as _;
    rand::rngs::OsRng
        .try_fill_bytes(buf)
        .map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_seeds_differ() {
        let (a, b) = (seed().expect("seed"), seed().expect("seed"));
        assert_ne!(a, b);
        assert_ne!(a, [0u8; 32]);
    }
}
