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
