//! Builds the guest components (the example projections, the test suite's hostile guests and
//! the benches' projections written without an SDK) for `wasm32-wasip2`, so nobody builds a
//! `.wasm` by hand and none is committed. They go to their own target directory (an inner cargo
//! cannot share the outer one's lock), and their folder is handed to the server and the tests
//! as `PROJECTOR_GUESTS_DIR`.

use std::path::PathBuf;
use std::process::Command;

/// Crates built to components; the first three are bundled into the binary as examples.
const GUESTS: &[&str] = &["stream-stats", "category-index", "order-summary", "hostile"];

/// JavaScript and Python guests, built by `scripts/build-projection` when their tools are
/// installed (`npm ci`, `scripts/setup-python`), skipped with a note when not: component name,
/// source, language.
const POLYGLOT: &[(&str, &str, Language)] = &[
    (
        "order-summary-js",
        "projections/order-summary-js",
        Language::Js,
    ),
    (
        "stream-stats-js",
        "projections/stream-stats-js",
        Language::Js,
    ),
    ("hostile-js", "tests/guests-js/hostile.js", Language::Js),
    (
        "stream-stats-raw-js",
        "benches/guests-js/stream-stats-raw",
        Language::Js,
    ),
    ("recorder-js", "tests/guests-js/recorder.js", Language::Js),
    (
        "order-summary-py",
        "projections/order-summary-py",
        Language::Py,
    ),
    (
        "stream-stats-py",
        "projections/stream-stats-py",
        Language::Py,
    ),
    ("hostile-py", "tests/guests-py/hostile.py", Language::Py),
    (
        "stream-stats-raw-py",
        "benches/guests-py/stream-stats-raw",
        Language::Py,
    ),
    ("recorder-py", "tests/guests-py/recorder.py", Language::Py),
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Language {
    Js,
    Py,
}

/// What `scripts/build-projection` exits with when a language's tools are not installed.
const TOOLS_MISSING: i32 = 3;

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
    build_polyglot(&root, &out);
    println!("cargo:rustc-env=PROJECTOR_GUESTS_DIR={}", out.display());
    for watched in [
        "sdk",
        "projections",
        "tests/guests",
        "Cargo.lock",
        "sdk-js",
        "sdk-py",
        "tests/guests-js",
        "tests/guests-py",
        "benches/guests-js",
        "benches/guests-py",
        "package-lock.json",
        "scripts/build-projection",
        "scripts/componentize-js.mjs",
        "scripts/js-glue.mjs",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    // Installing the tools builds the guests on the next build: while they are missing, the
    // build watches a file that installing touches (`npm ci` runs package.json's
    // `postinstall`; `scripts/setup-python` touches its requirements), since cargo cannot
    // watch a path that does not exist yet without rerunning on every build.
    for (installed, otherwise) in [
        ("node_modules/.package-lock.json", "package.json"),
        (".venv/pyvenv.cfg", "sdk-py/requirements-build.txt"),
    ] {
        let path = root.join(installed);
        let watched = if path.exists() {
            path
        } else {
            root.join(otherwise)
        };
        println!("cargo:rerun-if-changed={}", watched.display());
    }
}

/// Builds the JavaScript and Python guests into `out`, one thread per language (each build
/// takes several seconds). A language whose tools are missing is skipped with a note; any
/// other failure fails the build.
fn build_polyglot(root: &std::path::Path, out: &std::path::Path) {
    std::fs::create_dir_all(out).expect("creating the guests folder");
    let script = root.join("scripts/build-projection");
    std::thread::scope(|scope| {
        for language in [Language::Js, Language::Py] {
            let script = &script;
            scope.spawn(move || {
                for (name, source, _) in POLYGLOT.iter().filter(|(_, _, l)| *l == language) {
                    let output = Command::new("bash")
                        .arg(script)
                        .arg(root.join(source))
                        .arg(out.join(format!("{name}.wasm")))
                        .env_remove("CARGO_TARGET_DIR")
                        .output()
                        .expect("running scripts/build-projection");
                    match output.status.code() {
                        Some(0) => {}
                        Some(TOOLS_MISSING) => {
                            let reason = String::from_utf8_lossy(&output.stderr);
                            println!(
                                "cargo:warning=skipping the {} guests: {}",
                                if language == Language::Js {
                                    "JavaScript"
                                } else {
                                    "Python"
                                },
                                reason.trim()
                            );
                            return;
                        }
                        _ => panic!(
                            "building {source} failed:\n{}",
                            String::from_utf8_lossy(&output.stderr)
                        ),
                    }
                }
            });
        }
    });
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
