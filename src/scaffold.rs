//! `projector new` and `projector build`: a projection crate in one command, and its build to
//! a component. The crate depends on the SDK by path: the `sdk/` of the source tree this
//! binary was built from when it is still there, or the one `--sdk` names.

use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    #[error("a projection name is 1 to 64 of a-z, 0-9, - and _")]
    InvalidName,
    #[error("{0} exists already")]
    Exists(PathBuf),
    #[error(
        "no projector SDK found (this binary was built from a source tree that is gone): \
         pass --sdk PATH to the sdk/ folder of a Projector checkout"
    )]
    NoSdk,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("running the build: {0}")]
    Cargo(std::io::Error),
    #[error("the build failed ({0})")]
    BuildFailed(std::process::ExitStatus),
    #[error(
        "{0} is not a projection: a Rust crate (Cargo.toml), a JavaScript one (package.json or \
         a .js file) or a Python one (pyproject.toml or a .py file)"
    )]
    NotAProjection(PathBuf),
    #[error("{0} has no Cargo.toml with a package name")]
    NotACrate(PathBuf),
    #[error("the build made no {0}")]
    NoComponent(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ScaffoldError + '_ {
    move |source| ScaffoldError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The SDK to depend on: `sdk`, or the source tree's.
pub fn sdk_path(sdk: Option<&Path>) -> Result<PathBuf, ScaffoldError> {
    let candidate = match sdk {
        Some(path) => path.to_owned(),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("sdk"),
    };
    if !candidate.join("Cargo.toml").is_file() {
        return Err(ScaffoldError::NoSdk);
    }
    candidate.canonicalize().map_err(io(&candidate))
}

/// Writes a projection crate `<dir>/<name>`: a subscription, an `apply`, a native test.
/// Returns the crate's folder.
pub fn new(name: &str, dir: &Path, sdk: &Path) -> Result<PathBuf, ScaffoldError> {
    if !crate::scheduler::valid_name(name) {
        return Err(ScaffoldError::InvalidName);
    }
    let root = dir.join(name);
    if root.exists() {
        return Err(ScaffoldError::Exists(root));
    }
    let src = root.join("src");
    std::fs::create_dir_all(&src).map_err(io(&src))?;
    let files = [
        (root.join("Cargo.toml"), cargo_toml(name, sdk)),
        (src.join("lib.rs"), LIB_RS.replace("{name}", name)),
        (root.join(".gitignore"), "/target\n".to_owned()),
    ];
    for (path, text) in files {
        std::fs::write(&path, text).map_err(io(&path))?;
    }
    Ok(root)
}

fn cargo_toml(name: &str, sdk: &Path) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
projector-sdk = {{ path = {sdk:?} }}
serde = {{ version = "1", features = ["derive"] }}

[dev-dependencies]
serde_json = "1"

# A workspace of its own, wherever the folder is.
[workspace]

# Small, fast components: `projector build` builds this profile.
[profile.release]
lto = "fat"
codegen-units = 1
"#,
        sdk = sdk.display().to_string()
    )
}

const LIB_RS: &str = r#"//! Projection `{name}`: counts each stream's events and remembers the last event type.
//!
//! Documents: `stream/<stream>` → `{"events", "lastType", "lastPosition"}`.
//! Build: `projector build` (or `cargo build --release --target wasm32-wasip2`); deploy:
//! `projector deploy target/wasm32-wasip2/release/<crate>.wasm --name {name}`.

use projector_sdk::{Error, Event, Projection, Subscription, View};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StreamSummary {
    pub events: u64,
    pub last_type: String,
    pub last_position: u64,
}

pub struct Summary;

impl Projection for Summary {
    /// Which events to receive: all of them. Narrow it with `Subscription::categories`,
    /// `streams` or `event_types` so the host filters for you.
    fn subscription() -> Subscription {
        Subscription::all()
    }

    /// Called for each event, in log order. The view's documents are JSON; a change is sent
    /// to the host once per batch.
    fn apply(view: &mut View, event: &Event) -> Result<(), Error> {
        view.update(&["stream/", event.stream].concat(), |s: &mut StreamSummary| {
            s.events += 1;
            s.last_type = event.event_type.to_owned();
            s.last_position = event.position;
        })
    }
}

projector_sdk::export!(Summary);

#[cfg(test)]
mod tests {
    use projector_sdk::harness::Harness;
    use serde_json::json;

    use super::*;

    #[test]
    fn counts_each_streams_events() {
        let mut run = Harness::<Summary>::new();
        run.append("order-1", "OrderPlaced", json!({}));
        run.append("order-2", "OrderPlaced", json!({}));
        run.append("order-1", "OrderShipped", json!({}));
        assert_eq!(
            run.document("stream/order-1"),
            Some(json!({"events": 2, "lastType": "OrderShipped", "lastPosition": 3}))
        );
    }
}
"#;

/// Builds a projection to a component and returns the `.wasm`: a Rust crate with cargo, a
/// JavaScript (`package.json`, `.js`) or Python (`pyproject.toml`, `.py`) one with
/// `scripts/build-projection` of the source tree this binary was built from, into
/// `<dir>/target/<name>.wasm`.
pub fn build(dir: &Path) -> Result<PathBuf, ScaffoldError> {
    if dir.join("Cargo.toml").is_file() {
        return build_crate(dir);
    }
    let polyglot = dir.join("package.json").is_file()
        || dir.join("pyproject.toml").is_file()
        || (dir.is_file() && dir.extension().is_some_and(|e| e == "js" || e == "py"));
    if !polyglot {
        return Err(ScaffoldError::NotAProjection(dir.to_owned()));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-projection");
    if !script.is_file() {
        return Err(ScaffoldError::NoSdk);
    }
    let (folder, name) = match (dir.is_dir(), dir.file_stem().and_then(|s| s.to_str())) {
        (true, Some(name)) => (dir.to_owned(), name.to_owned()),
        (false, Some(name)) => (
            dir.parent().unwrap_or(Path::new(".")).to_owned(),
            name.to_owned(),
        ),
        (_, None) => return Err(ScaffoldError::NotAProjection(dir.to_owned())),
    };
    let out = folder.join("target").join(format!("{name}.wasm"));
    let target = folder.join("target");
    std::fs::create_dir_all(&target).map_err(io(&target))?;
    let status = Command::new("bash")
        .arg(&script)
        .arg(dir)
        .arg(&out)
        .status()
        .map_err(ScaffoldError::Cargo)?;
    if !status.success() {
        return Err(ScaffoldError::BuildFailed(status));
    }
    Ok(out)
}

/// Builds the crate in `dir` with cargo, adding the target first when rustup lacks it.
fn build_crate(dir: &Path) -> Result<PathBuf, ScaffoldError> {
    let manifest = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).map_err(io(&manifest))?;
    let package = package_name(&text).ok_or_else(|| ScaffoldError::NotACrate(dir.to_owned()))?;
    // Without RUSTUP_AUTO_INSTALL, rustup does not fetch a missing target; a failure here is
    // left to cargo to explain.
    let _ = Command::new("rustup")
        .args(["target", "add", "wasm32-wasip2"])
        .current_dir(dir)
        .output();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(&cargo)
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .current_dir(dir)
        .status()
        .map_err(ScaffoldError::Cargo)?;
    if !status.success() {
        return Err(ScaffoldError::BuildFailed(status));
    }
    let wasm = target_dir(&cargo, dir)?
        .join("wasm32-wasip2/release")
        .join(format!("{}.wasm", package.replace('-', "_")));
    if !wasm.is_file() {
        return Err(ScaffoldError::NoComponent(wasm));
    }
    Ok(wasm)
}

/// Where cargo puts the crate's build (`CARGO_TARGET_DIR`, a config, or `<dir>/target`).
fn target_dir(cargo: &std::ffi::OsStr, dir: &Path) -> Result<PathBuf, ScaffoldError> {
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(dir)
        .output()
        .map_err(ScaffoldError::Cargo)?;
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)
        .map_err(|_| ScaffoldError::NotACrate(dir.to_owned()))?;
    metadata["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .ok_or_else(|| ScaffoldError::NotACrate(dir.to_owned()))
}

/// `name = "..."` of the `[package]` table.
fn package_name(cargo_toml: &str) -> Option<String> {
    let mut in_package = false;
    for line in cargo_toml.lines().map(str::trim) {
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package && let Some(value) = line.strip_prefix("name") {
            let value = value.trim_start().strip_prefix('=')?.trim();
            return Some(value.trim_matches('"').to_owned());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_package_name_is_read_from_the_package_table() {
        let toml = "[lib]\nname = \"x\"\n[package]\nversion = \"1\"\nname = \"my-proj\"\n";
        assert_eq!(package_name(toml).as_deref(), Some("my-proj"));
        assert_eq!(package_name("[lib]\nname = \"x\"\n"), None);
    }
}
