use std::collections::HashMap;
use std::sync::Mutex;

use projector_sdk::{Event, frame};

use super::*;

/// A component built by `build.rs`, for the library's tests.
pub(crate) fn guest(name: &str) -> Vec<u8> {
    let path = Path::new(env!("PROJECTOR_GUESTS_DIR")).join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn batch(events: &[(&str, &str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, (stream, event_type, data)) in events.iter().enumerate() {
        frame::encode(
            &mut out,
            &Event {
                position: i as u64 + 1,
                revision: 0,
                recorded_at: 0,
                id: [0; 16],
                stream,
                event_type,
                data: data.as_bytes(),
                metadata: b"",
            },
        );
    }
    out
}

/// A view held in a map, shared with the test.
struct MapView(Arc<Mutex<HashMap<String, Vec<u8>>>>);

impl ViewReader for MapView {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        Ok(self.0.lock().unwrap().get(key).cloned())
    }
}

fn runtime(limits: Limits) -> (tempfile::TempDir, Runtime) {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(dir.path(), limits).unwrap();
    (dir, runtime)
}

#[test]
fn runs_a_projection_and_returns_its_writes() {
    let (_dir, runtime) = runtime(Limits::default());
    let code = runtime.load("stats", &guest("stream_stats")).unwrap();
    assert_eq!(code.subscription(), &Subscription::all());
    let docs = Arc::new(Mutex::new(HashMap::new()));
    docs.lock().unwrap().insert(
        "total".to_owned(),
        br#"{"events":10,"streams":2,"lastPosition":0}"#.to_vec(),
    );
    let events = [
        ("order-1", "A", "{}"),
        ("order-2", "B", "{}"),
        ("order-1", "C", "{}"),
    ];
    let applied = code
        .apply(&batch(&events), events.len(), Box::new(MapView(docs)))
        .unwrap();
    let doc = |k: &str| -> serde_json::Value {
        serde_json::from_slice(applied.changes[k].as_ref().unwrap()).unwrap()
    };
    assert_eq!(
        doc("total"),
        serde_json::json!({"events": 13, "streams": 4, "lastPosition": 3})
    );
    assert_eq!(doc("stream/order-1")["events"], 2);
}

#[test]
fn the_compiled_component_is_cached_by_content() {
    let (dir, runtime) = runtime(Limits::default());
    runtime.load("a", &guest("stream_stats")).unwrap();
    runtime.load("b", &guest("stream_stats")).unwrap();
    let mut cached: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    cached.sort();
    assert_eq!(cached.len(), 2, "{cached:?}");
    assert!(
        cached[0].ends_with(".cwasm"),
        "one compiled component: {cached:?}"
    );
    assert_eq!(cached[1], "functions.redb", "and its compiled functions");
}

#[test]
fn hostile_guests_fault_with_the_reason() {
    let limits = Limits {
        fuel_base: 20_000_000,
        fuel_per_event: 0,
        deadline: Duration::from_secs(5),
        memory_bytes: 32 * 1024 * 1024,
        written_bytes: 8 * 1024 * 1024,
    };
    let (_dir, runtime) = runtime(limits);
    let code = runtime.load("hostile", &guest("hostile")).unwrap();
    let empty = || Box::new(guest::EmptyView);
    for (event_type, kind) in [
        ("Loop", FaultKind::OutOfFuel),
        ("Bomb", FaultKind::Memory),
        ("Panic", FaultKind::Trap),
        ("Refuse", FaultKind::Refused),
        ("Flood", FaultKind::Writes),
    ] {
        let fault = match code.apply(&batch(&[("hostile-1", event_type, "{}")]), 1, empty()) {
            Err(fault) => fault,
            Ok(_) => panic!("{event_type} succeeded"),
        };
        assert_eq!(fault.kind, kind, "{event_type}: {}", fault.message);
    }
    let printed = code
        .apply(&batch(&[("hostile-1", "Print", "\"hello\"")]), 1, empty())
        .unwrap();
    assert_eq!(printed.changes["count"], Some(b"1".to_vec()));
}

#[test]
fn files_that_are_not_components_are_refused() {
    let (_dir, runtime) = runtime(Limits::default());
    for bytes in [&b"not wasm at all"[..], b"\0asm\x01\0\0\0"] {
        match runtime.load("bad", bytes) {
            Err(LoadError::Invalid(_)) => {}
            Err(other) => panic!("wrong error: {other}"),
            Ok(_) => panic!("loaded"),
        }
    }
}

#[test]
fn more_batches_at_once_than_the_pool_has_slots_all_run_alike() {
    let (_dir, runtime) = runtime(Limits::default());
    let code = runtime.load("stats", &guest("stream_stats")).unwrap();
    let events = [("order-1", "A", "{}"), ("order-2", "B", "{}")];
    let framed = batch(&events);
    let run = || {
        let view = MapView(Arc::new(Mutex::new(HashMap::new())));
        let applied = code.apply(&framed, events.len(), Box::new(view)).unwrap();
        let mut changes: Vec<_> = applied.changes.into_iter().collect();
        changes.sort();
        changes
    };
    let expected = run();
    assert!(expected.iter().any(|(key, _)| key == "stream/order-2"));
    std::thread::scope(|scope| {
        let threads: Vec<_> = (0..pool::INSTANCES * 2)
            .map(|_| scope.spawn(|| (0..4).map(|_| run()).collect::<Vec<_>>()))
            .collect();
        for thread in threads {
            for changes in thread.join().unwrap() {
                assert_eq!(changes, expected);
            }
        }
    });
}

/// `changes` for `view.write-many`: (key, document or `None` to delete), framed.
fn write_many_list(changes: &[(&[u8], Option<&[u8]>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in changes {
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key);
        match value {
            Some(value) => {
                out.extend_from_slice(&(value.len() as u32).to_le_bytes());
                out.extend_from_slice(value);
            }
            None => out.extend_from_slice(&u32::MAX.to_le_bytes()),
        }
    }
    out
}

#[test]
fn write_many_applies_puts_and_deletes_in_order_and_traps_on_a_malformed_list() {
    use bindings::projector::projection::view::Host;
    let limits = Limits::default();
    let mut state = GuestState::new(Box::new(guest::EmptyView), &limits);
    let changes = write_many_list(&[
        (b"a", Some(b"1")),
        (b"b", Some(b"")),
        (b"a", Some(b"2")),
        (b"c", Some(b"3")),
        (b"c", None),
        ("d/%é".as_bytes(), Some(b"4")),
    ]);
    state.write_many(changes).unwrap();
    state.write_many(Vec::new()).unwrap();
    assert_eq!(state.get("a".into()).unwrap(), Some(b"2".to_vec()));
    let mut changes: Vec<_> = state.into_changes().into_iter().collect();
    changes.sort();
    assert_eq!(
        changes,
        [
            ("a".to_owned(), Some(b"2".to_vec())),
            ("b".to_owned(), Some(Vec::new())),
            ("c".to_owned(), None),
            ("d/%é".to_owned(), Some(b"4".to_vec())),
        ]
    );

    let full = write_many_list(&[(b"key", Some(b"value"))]);
    for (changes, reason) in [
        (full[..full.len() - 1].to_vec(), "truncated"),
        (full[..3].to_vec(), "truncated"),
        (full[..7].to_vec(), "truncated"),
        (write_many_list(&[(b"\xff", Some(b"1"))]), "not UTF-8"),
        (write_many_list(&[(b"", Some(b"1"))]), "1 to 512 bytes"),
        (write_many_list(&[(&[b'k'; 513], None)]), "1 to 512 bytes"),
    ] {
        let mut state = GuestState::new(Box::new(guest::EmptyView), &limits);
        let error = state.write_many(changes).unwrap_err().to_string();
        assert!(error.contains(reason), "{reason}: {error}");
    }
}

/// Components built against contract 0.1.0 (before `write-many`) load and run unchanged: the
/// linker serves their `@0.1.0` imports with the 0.1.1 interfaces.
#[test]
fn a_component_built_against_contract_0_1_0_still_runs() {
    let current = guest("stream_stats");
    let mut old = current.clone();
    let mut renamed = 0;
    for interface in ["view", "types"] {
        let from = format!("projector:projection/{interface}@0.1.1");
        let to = format!("projector:projection/{interface}@0.1.0");
        let mut at = 0;
        while let Some(i) = old[at..]
            .windows(from.len())
            .position(|w| w == from.as_bytes())
        {
            old[at + i..at + i + to.len()].copy_from_slice(to.as_bytes());
            at += i + to.len();
            renamed += 1;
        }
    }
    assert!(renamed >= 2, "the component imports the 0.1.1 interfaces");
    let (_dir, runtime) = runtime(Limits::default());
    let events = [("order-1", "A", "{}"), ("order-2", "B", "{}")];
    let run = |bytes: &[u8], name: &str| {
        let code = runtime.load(name, bytes).unwrap();
        let docs = Arc::new(Mutex::new(HashMap::new()));
        let applied = code
            .apply(&batch(&events), events.len(), Box::new(MapView(docs)))
            .unwrap();
        let mut changes: Vec<_> = applied.changes.into_iter().collect();
        changes.sort();
        changes
    };
    let from_old = run(&old, "old");
    assert_eq!(from_old.len(), 3, "{from_old:?}");
    assert_eq!(from_old, run(&current, "current"));
}
