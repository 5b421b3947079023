//! Projector beside plain PostgreSQL on one workload, in one run (issue 16).
//!
//! `cargo bench --bench peers`: 1,000 or so `account-N` streams, one `Deposited{amount}` event
//! per append, a per-stream read model, fsync on for both, on this machine's cores. Projector
//! is the release server on loopback driven by the lean client of `support`; PostgreSQL is the
//! machine's server (127.0.0.1:5432, user `postgres`, database `test`, schema `peers`, made
//! afresh) driven by `pgbench`, with an equivalent plain-SQL baseline:
//!
//! - events: a table with a `bigserial` position and a unique `(stream, revision)` index; an
//!   append is one transaction inserting at the stream's next revision (each client appends to
//!   streams of its own, as Projector's clients do, so no append fails on the index);
//! - the read model: a row per stream `(count, balance, last_type)` updated per event by a
//!   PL/pgSQL loop over the events in position order (user code per event, inside the
//!   database); Projector's is `stream-stats` (a document per stream updated per event, and a
//!   total), deployed after the appends and timed from its PUT to its catch-up;
//! - point reads of the read model by stream.
//!
//! Each figure prints beside its PostgreSQL counterpart with the ratio. `BENCH_SECONDS`
//! (default 5) sets a load's length. Without `pgbench` or a reachable PostgreSQL the
//! PostgreSQL column says so and Projector's figures are still measured.

use std::process::Command;
use std::time::{Duration, Instant};

mod support;
use support::{Server, env_number, get_json, guest, lean_rate};

/// Streams each client appends to (its own): 64 clients × 16 = 1,024 streams.
const STREAMS_PER_CLIENT: u64 = 16;

fn main() {
    let seconds = Duration::from_secs(env_number("BENCH_SECONDS", 5));
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let projector = support::runtime().block_on(projector_figures(scratch.path(), seconds));
    let postgres = Postgres::connect().map(|pg| pg.figures(seconds));
    if let Err(why) = &postgres {
        eprintln!("PostgreSQL skipped: {why}");
    }
    println!("| figure | plain PostgreSQL | Projector | Projector / PostgreSQL |");
    println!("|---|---:|---:|---:|");
    for (i, (name, ours)) in projector.iter().enumerate() {
        match &postgres {
            Ok(theirs) => println!(
                "| {name} | {:.0} | {ours:.0} | {:.2} |",
                theirs[i],
                ours / theirs[i]
            ),
            Err(_) => println!("| {name} | (not measured) | {ours:.0} | |"),
        }
    }
}

/// The figures, in the order both sides report them.
const FIGURES: [&str; 7] = [
    "append, 1 client, 1 event per request (events/s)",
    "append, 8 clients (events/s)",
    "append, 64 clients (events/s)",
    "bulk append, 1,000 events per request, 1 client (events/s)",
    "read model catch-up, user code per event (events/s)",
    "point read of the read model, 8 clients (reads/s)",
    "point read of the read model, 64 clients (reads/s)",
];

fn deposit_body(n: u64) -> String {
    format!(
        r#"[{{"type":"Deposited","data":{{"amount":{}}}}}]"#,
        1 + n % 100
    )
}

async fn projector_figures(scratch: &std::path::Path, seconds: Duration) -> Vec<(String, f64)> {
    let server = Server::start(&scratch.join("projector"));
    let addr = server.base.trim_start_matches("http://").to_owned();
    let mut out = Vec::new();
    for clients in [1usize, 8, 64] {
        let host = addr.clone();
        let rate = lean_rate(&addr, clients, seconds, 201, move |c, n| {
            let stream = c as u64 + clients as u64 * (n % STREAMS_PER_CLIENT);
            let body = deposit_body(n);
            format!(
                "POST /streams/account-{stream} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        })
        .await;
        eprintln!("Projector: {}: {rate:.0}", FIGURES[out.len()]);
        out.push(rate);
    }
    let bulk: String = format!(
        "[{}]",
        (0..1000)
            .map(|n| format!(
                r#"{{"type":"Deposited","data":{{"amount":{}}}}}"#,
                1 + n % 100
            ))
            .collect::<Vec<_>>()
            .join(",")
    );
    let host = addr.clone();
    let requests = lean_rate(&addr, 1, seconds, 201, move |_, n| {
        format!(
            "POST /streams/bulk-{n} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{bulk}",
            bulk.len()
        )
        .into_bytes()
    })
    .await;
    out.push(requests * 1000.0);

    // The read model: stream-stats deployed now, timed from its PUT to its catch-up.
    let client = reqwest::Client::new();
    let health = get_json(&client, &format!("{}/health", server.base)).await;
    let head = health["head"].as_u64().expect("health names the head");
    let start = Instant::now();
    let put = client
        .put(format!("{}/projections/stream-stats", server.base))
        .body(guest("stream_stats"))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 202);
    let url = format!(
        "{}/projections/stream-stats/view/total?wait_for={head}&timeout_ms=30000",
        server.base
    );
    while client.get(&url).send().await.unwrap().status() != 200 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    out.push(head as f64 / start.elapsed().as_secs_f64());

    for clients in [8usize, 64] {
        let host = addr.clone();
        let rate = lean_rate(&addr, clients, seconds, 200, move |c, n| {
            let stream = (c as u64 * 7919 + n * 104_729) % (64 * STREAMS_PER_CLIENT);
            format!("GET /projections/stream-stats/view/stream/account-{stream} HTTP/1.1\r\nhost: {host}\r\n\r\n")
                .into_bytes()
        })
        .await;
        out.push(rate);
    }
    FIGURES.iter().map(|f| f.to_string()).zip(out).collect()
}

/// The machine's PostgreSQL, through `psql` and `pgbench`.
struct Postgres {
    scripts: tempfile::TempDir,
}

const CONNECT: [&str; 6] = ["-h", "127.0.0.1", "-U", "postgres", "-d", "test"];

impl Postgres {
    fn connect() -> Result<Postgres, String> {
        for tool in ["psql", "pgbench"] {
            Command::new(tool)
                .arg("--version")
                .output()
                .map_err(|e| format!("{tool} is not installed ({e})"))?;
        }
        let pg = Postgres {
            scripts: tempfile::tempdir().unwrap(),
        };
        pg.sql(
            "DROP SCHEMA IF EXISTS peers CASCADE; CREATE SCHEMA peers;
             CREATE TABLE peers.events (position bigserial PRIMARY KEY, stream text NOT NULL,
               revision bigint NOT NULL, type text NOT NULL, data jsonb NOT NULL,
               recorded_at timestamptz NOT NULL DEFAULT now(), UNIQUE (stream, revision));
             CREATE TABLE peers.read_model (stream text PRIMARY KEY, count bigint NOT NULL,
               balance bigint NOT NULL, last_type text NOT NULL);",
        )?;
        Ok(pg)
    }

    fn sql(&self, sql: &str) -> Result<String, String> {
        let out = Command::new("psql")
            .args(CONNECT)
            .args(["-v", "ON_ERROR_STOP=1", "-Atqc", sql])
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "psql failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Transactions per second of `script` run by `clients` pgbench clients for `seconds`.
    fn pgbench(&self, name: &str, script: &str, clients: usize, seconds: Duration) -> f64 {
        let path = self.scripts.path().join(format!("{name}.sql"));
        std::fs::write(&path, script).unwrap();
        let out = Command::new("pgbench")
            .args(CONNECT)
            .args(["-n", "-M", "prepared", "-c", &clients.to_string()])
            .args(["-j", &clients.min(2).to_string()])
            .args(["-T", &seconds.as_secs().to_string()])
            .args(["-D", &format!("clients={clients}")])
            .arg("-f")
            .arg(&path)
            .output()
            .expect("running pgbench");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "pgbench {name}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text.lines()
            .find_map(|l| l.strip_prefix("tps = "))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no tps in pgbench's output: {text}"))
    }

    fn figures(&self, seconds: Duration) -> Vec<f64> {
        let mut out = Vec::new();
        let append = format!(
            "\\set s :client_id + :clients * random(0, {})
\\set a random(1, 100)
INSERT INTO peers.events (stream, revision, type, data)
  SELECT 'account-' || :s::text, coalesce(max(revision) + 1, 0), 'Deposited',
         jsonb_build_object('amount', :a::int)
  FROM peers.events WHERE stream = 'account-' || :s::text;
",
            STREAMS_PER_CLIENT - 1
        );
        for clients in [1usize, 8, 64] {
            out.push(self.pgbench("append", &append, clients, seconds));
        }
        let bulk = "\\set n random(1, 1000000000)
INSERT INTO peers.events (stream, revision, type, data)
  SELECT 'bulk-' || :client_id::text || '-' || :n::text, r, 'Deposited', jsonb_build_object('amount', 1 + r % 100)
  FROM generate_series(0, 999) AS r;
";
        out.push(self.pgbench("bulk", bulk, 1, seconds) * 1000.0);

        // The read model, per event in position order, in one PL/pgSQL loop.
        let events: f64 = self
            .sql("SELECT count(*) FROM peers.events")
            .unwrap()
            .parse()
            .unwrap();
        let start = Instant::now();
        self.sql(
            "DO $$ DECLARE e record; BEGIN
               FOR e IN SELECT stream, type, data FROM peers.events ORDER BY position LOOP
                 INSERT INTO peers.read_model AS m VALUES (e.stream, 1, (e.data->>'amount')::bigint, e.type)
                 ON CONFLICT (stream) DO UPDATE SET count = m.count + 1,
                   balance = m.balance + (e.data->>'amount')::bigint, last_type = e.type;
               END LOOP; END $$;",
        )
        .unwrap();
        out.push(events / start.elapsed().as_secs_f64());

        let read = format!(
            "\\set s random(0, {})
SELECT count, balance, last_type FROM peers.read_model WHERE stream = 'account-' || :s::text;
",
            64 * STREAMS_PER_CLIENT - 1
        );
        for clients in [8usize, 64] {
            out.push(self.pgbench("read", &read, clients, seconds));
        }
        out
    }
}
