//! `projector new` and `projector build`: a projection in one command (a Rust crate, or a
//! JavaScript or Python folder), and its build to a component. It depends on the SDK by path:
//! the `sdk/` (`sdk-js/`, `sdk-py/`) of the source tree this binary was built from when it is
//! still there, or of the checkout whose `sdk/` `--sdk` names.

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

/// The language of a new projection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Language {
    Rust,
    Js,
    Python,
}

/// Writes a JavaScript or Python projection folder `<dir>/<name>`: the same stream summary as
/// the Rust template, with its native test, depending on the SDK beside `sdk` (`sdk-js/`,
/// `sdk-py/`). Returns the folder.
pub fn new_polyglot(
    name: &str,
    dir: &Path,
    sdk: &Path,
    language: Language,
) -> Result<PathBuf, ScaffoldError> {
    if !crate::scheduler::valid_name(name) {
        return Err(ScaffoldError::InvalidName);
    }
    let root = dir.join(name);
    if root.exists() {
        return Err(ScaffoldError::Exists(root));
    }
    let checkout = sdk.parent().unwrap_or(sdk);
    let module = name.replace('-', "_");
    let files = match language {
        Language::Js => {
            let sdk_js = checkout.join("sdk-js");
            let package = serde_json::json!({
                "name": name, "version": "0.1.0", "private": true, "type": "module",
                "main": "src/projection.js",
                "scripts": {"test": "node --test test/"},
                "dependencies": {"@projector/sdk": format!("file:{}", sdk_js.display())},
            });
            vec![
                (root.join("package.json"), format!("{package:#}\n")),
                (root.join("src/projection.js"), PROJECTION_JS.to_owned()),
                (root.join("test/projection.test.js"), TEST_JS.to_owned()),
                (
                    root.join(".gitignore"),
                    "/target\n/node_modules\n".to_owned(),
                ),
            ]
        }
        Language::Python => {
            let sdk_py = checkout.join("sdk-py");
            let pyproject = format!(
                "[project]\nname = \"{name}\"\nversion = \"0.1.0\"\nrequires-python = \">=3.11\"\n\n\
                 [tool.projector]\nmodule = \"{module}\"\n\n\
                 [tool.pytest.ini_options]\npythonpath = [\".\", {:?}]\ntestpaths = [\"tests\"]\n",
                sdk_py.display().to_string()
            );
            vec![
                (root.join("pyproject.toml"), pyproject),
                (root.join(format!("{module}.py")), PROJECTION_PY.to_owned()),
                (
                    root.join(format!("tests/test_{module}.py")),
                    TEST_PY.replace("{module}", &module),
                ),
                (
                    root.join(".gitignore"),
                    "/target\n__pycache__/\n".to_owned(),
                ),
            ]
        }
        Language::Rust => unreachable!("a Rust projection is a crate: `new`"),
    };
    for (path, text) in files {
        let folder = path.parent().unwrap_or(&root);
        std::fs::create_dir_all(folder).map_err(io(folder))?;
        std::fs::write(&path, text).map_err(io(&path))?;
    }
    Ok(root)
}

const PROJECTION_JS: &str = r#"// A projection: for each stream, how many events it has, and its last event's type and
// position. See docs/javascript.md of Projector.
import { defineProjection, Subscription } from '@projector/sdk';

export default defineProjection({
  // Every event; narrow it with Subscription.categories([...]).ofTypes([...]).
  subscription: Subscription.all(),

  apply(view, event) {
    const summary = view.edit(`stream/${event.stream}`, () => ({ events: 0, lastType: '', lastPosition: 0 }));
    summary.events += 1;
    summary.lastType = event.type;
    summary.lastPosition = event.position;
  },
});
"#;

const TEST_JS: &str = r#"import { test } from 'node:test';
import assert from 'node:assert/strict';

import { Harness } from '@projector/sdk/harness';
import projection from '../src/projection.js';

test("counts each stream's events", () => {
  const run = new Harness(projection);
  run.append('order-1', 'OrderPlaced', {});
  run.append('order-2', 'OrderPlaced', {});
  run.append('order-1', 'OrderShipped', {});
  assert.deepEqual(run.document('stream/order-1'), { events: 2, lastType: 'OrderShipped', lastPosition: 3 });
});
"#;

const PROJECTION_PY: &str = r#""""A projection: for each stream, how many events it has, and its last event's type and
position. See docs/python.md of Projector."""

from projector_sdk import Subscription

# Every event; narrow it with Subscription(categories=[...], event_types=[...]).
subscription = Subscription.all()


def new_summary():
    return {"events": 0, "lastType": "", "lastPosition": 0}


def apply(view, event):
    summary = view.edit(f"stream/{event.stream}", new_summary)
    summary["events"] += 1
    summary["lastType"] = event.type
    summary["lastPosition"] = event.position
"#;

const TEST_PY: &str = r#"import {module}
from projector_sdk.harness import Harness


def test_counts_each_streams_events():
    run = Harness({module})
    run.append("order-1", "OrderPlaced")
    run.append("order-2", "OrderPlaced")
    run.append("order-1", "OrderShipped")
    assert run.document("stream/order-1") == {"events": 2, "lastType": "OrderShipped", "lastPosition": 3}
"#;

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
