//! Link flags for the `shiptoken` binary.
//!
//! Packed relative relocations (`-z pack-relative-relocs`, DT_RELR): the dynamic loader's
//! table of the binary's relocations shrinks from about 450 KB to a few KB. Every process reads
//! that table whole at start, so it was part of every `get`'s page faults and of the idle
//! daemon's resident memory (docs/socket.md, docs/scale.md). A binary with DT_RELR needs glibc
//! 2.36 or later to run, so the flag is passed only when building for the machine's own glibc
//! and that glibc is 2.36 or later; elsewhere the binary links as before.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let target = std::env::var("TARGET").unwrap_or_default();
    let host = std::env::var("HOST").unwrap_or_default();
    if target == host && target.ends_with("-linux-gnu") && glibc_at_least(2, 36) {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// Whether this machine's glibc (`getconf GNU_LIBC_VERSION`: "glibc 2.36") is at least
/// `major.minor`; false when it cannot be told.
fn glibc_at_least(major: u32, minor: u32) -> bool {
    let Ok(out) = Command::new("getconf").arg("GNU_LIBC_VERSION").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(version) = text.trim().strip_prefix("glibc ") else {
        return false;
    };
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    found >= (major, minor)
}
