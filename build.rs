//! Builds the guest components (the example projections and the test suite's hostile guests)
//! for `wasm32-wasip2`, so nobody builds a `.wasm` by hand and none is committed. They go to
//! their own target directory (an inner cargo cannot share the outer one's lock), and their
//! folder is handed to the server and the tests as `PROJECTOR_GUESTS_DIR`.

use std::path::PathBuf;
use std::process::Command;

/// Crates built to components; the first three are bundled into the binary as examples.
const GUESTS: &[&str] = &["stream-stats", "category-index", "order-summary", "hostile"];

fn main() {
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), PathBuf::from)
        .join("guests");
    ensure_wasm_target();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(&root)
        .args([
            "build",
            "--profile",
            "guest",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&target_dir);
    for guest in GUESTS {
        build.args(["-p", guest]);
    }
    // The outer build's flags are for the host target; they must not leak into wasm builds.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        build.env_remove(var);
    }
    let status = build
        .status()
        .expect("running cargo for the guest components");
    assert!(
        status.success(),
        "building the guest components for wasm32-wasip2 failed (the target could not be added? \
         `rustup target add wasm32-wasip2`)"
    );
    let out = target_dir.join("wasm32-wasip2").join("guest");
    println!("cargo:rustc-env=PROJECTOR_GUESTS_DIR={}", out.display());
    for watched in ["sdk", "projections", "tests/guests", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
}

/// Adds the `wasm32-wasip2` target to the toolchain when it is missing (rustup does not when
/// `RUSTUP_AUTO_INSTALL=0`), so a fresh checkout builds with `cargo` alone.
fn ensure_wasm_target() {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let installed = sysroot
        .as_ref()
        .is_some_and(|root| root.join("lib/rustlib/wasm32-wasip2").is_dir());
    if installed {
        return;
    }
    println!("cargo:warning=adding the wasm32-wasip2 target with rustup");
    let mut rustup = Command::new("rustup");
    rustup.args(["target", "add", "wasm32-wasip2"]);
    if let Some(toolchain) = std::env::var_os("RUSTUP_TOOLCHAIN") {
        rustup.arg("--toolchain").arg(toolchain);
    }
    match rustup.status() {
        Ok(status) if status.success() => {}
        other => println!("cargo:warning=`rustup target add wasm32-wasip2` failed: {other:?}"),
    }
}
