//! A projection that misbehaves on demand, to show that the server isolates it. It reads the
//! `hostile` category and counts events under `count`, except for these event types:
//!
//! - `Loop`: spins forever;
//! - `Bomb`: allocates memory until something stops it;
//! - `Panic`: panics (a trap);
//! - `Refuse`: returns an error;
//! - `Flood`: writes 1 MiB documents without end;
//! - `Sleep`: sleeps for an hour through WASI's monotonic clock;
//! - `Print`: prints its data to stdout and counts it like any other event;
//! - `Garbage`: stores a document under `garbage` that is not JSON (nor UTF-8).

use projector_sdk::{Error, Event, Projection, Subscription, View};

pub struct Hostile;

impl Projection for Hostile {
    fn subscription() -> Subscription {
        Subscription::categories(["hostile"])
    }

    fn apply(view: &mut View, event: &Event) -> Result<(), Error> {
        match event.event_type {
            "Loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "Bomb" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    // Reserved, never touched: memory grows without spending fuel on filling it.
                    hoard.push(Vec::<u8>::with_capacity(16 << 20));
                    std::hint::black_box(&hoard);
                }
            }
            "Panic" => panic!("asked to panic at position {}", event.position),
            "Refuse" => return Err(Error::new("asked to refuse this event")),
            "Flood" => {
                let big = vec![b'x'; 1 << 20];
                for n in 0u64.. {
                    view.put_bytes(&format!("flood/{n}"), big.clone());
                    view.flush_pending()?;
                }
            }
            "Sleep" => std::thread::sleep(std::time::Duration::from_secs(3600)),
            "Print" => println!("{}", String::from_utf8_lossy(event.data)),
            "Garbage" => view.put_bytes("garbage", b"not json \xff".to_vec()),
            _ => {}
        }
        view.update("count", |n: &mut u64| *n += 1)
    }
}

projector_sdk::export!(Hostile);
