//! Link flags that make the `shiptoken` binary cheaper to start. A script that runs `shiptoken
//! get` in a loop pays for the whole process each time, and most of that is the dynamic
//! loader and page faults, not the request (docs/socket.md, "One `get`").
//!
//! - Packed relative relocations (`-z pack-relative-relocs`, DT_RELR): the loader's table of
//!   the binary's relocations shrinks from about 450 KB to a few KB, which every process read
//!   whole at start. A binary with DT_RELR needs glibc 2.36 or later to run.
//! - The unwinder linked in from GCC's static `libgcc_eh.a` rather than loaded from
//!   `libgcc_s.so.1`: loading that library cost every process about 0.12 ms on this project's
//!   machines (its constructor probes the CPU with `cpuid`, a VM exit each, and the loader
//!   maps and relocates it). Same unwinder, same code; panics and backtraces work as before.
//! - The functions that run placed together (`link/hot.order`, lld's
//!   `--symbol-ordering-file`): first those of a `get`, which scattered over the 7 MB of code
//!   cost it about 40 page faults and placed together a handful; then the daemon's, which
//!   scattered kept most of the code resident (docs/scale.md). `scripts/link-order.sh` writes
//!   the list; a name the build no longer has is skipped, so a stale list costs speed and
//!   memory, never a build.
//!
//! Each is taken only when building for the machine's own glibc (the first needs 2.36) and,
//! for the ordering, with the toolchain's own lld (the default linker of
//! x86_64-unknown-linux-gnu since Rust 1.90); elsewhere the binary links as before.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=link/hot.order");
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
    let target = std::env::var("TARGET").unwrap_or_default();
    let host = std::env::var("HOST").unwrap_or_default();
    if target != host || !target.ends_with("-linux-gnu") {
        return;
    }
    if glibc_at_least(2, 36) {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    if let Some(dir) = static_unwinder_dir() {
        println!("cargo:rustc-link-search=native={}", dir.display());
        println!("cargo:rustc-link-lib=static=gcc_eh");
    }
    if target == "x86_64-unknown-linux-gnu" && default_linker() {
        let order = Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default())
            .join("link/hot.order");
        if order.is_file() {
            println!(
                "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
                order.display()
            );
            println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
        }
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

/// The folder of the C compiler's `libgcc_eh.a` (`cc -print-file-name`, which prints the bare
/// name when it has no such file), or `None`.
fn static_unwinder_dir() -> Option<std::path::PathBuf> {
    let out = Command::new("cc")
        .arg("-print-file-name=libgcc_eh.a")
        .output()
        .ok()?;
    let path = std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if path.is_absolute() && path.is_file() {
        path.parent().map(Path::to_path_buf)
    } else {
        None
    }
}

/// Whether the build links with rustc's default linker (lld through `cc`): no linker is
/// configured for the target and no flag changes it. Another linker may not know
/// `--symbol-ordering-file`.
fn default_linker() -> bool {
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    std::env::var_os("RUSTC_LINKER").is_none() && !flags.contains("link")
}
