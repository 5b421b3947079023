//! The `projector` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use projector::auth::{AuthMode, KeyStore, NewKey, Scope};
use projector::client::Remote;
use projector::runtime::Limits;
use projector::scaffold;
use projector::server::{self, ServeConfig};

#[derive(Parser)]
#[command(
    name = "projector",
    version,
    about = "A WebAssembly-pluggable projection engine over a durable event log"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How log lines (on stderr) are written: `text` for people, `json` (one object per line)
    /// for log collectors.
    #[arg(
        long,
        global = true,
        env = "PROJECTOR_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// The HTTP server's limits: what a client, careless or hostile, may hold.
#[derive(clap::Args)]
struct HttpArgs {
    /// Most open connections; over it a new connection gets a 503 (default: sized to the
    /// file-descriptor limit, which the server raises to its hard limit, at most 10,000).
    #[arg(long, env = "PROJECTOR_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Seconds a connection has to send a request's headers, from when it opens or its
    /// previous response ends (so idle keep-alive connections close after it too).
    #[arg(long, env = "PROJECTOR_HEADER_TIMEOUT", default_value_t = 20)]
    header_timeout: u64,
    /// Seconds a response may wait on a client that does not read before the connection is
    /// closed.
    #[arg(long, env = "PROJECTOR_SEND_TIMEOUT", default_value_t = 30)]
    send_timeout: u64,
    /// Seconds in-flight requests get to finish at shutdown before their connections close.
    #[arg(long, env = "PROJECTOR_DRAIN_TIMEOUT", default_value_t = 10)]
    drain_timeout: u64,
    /// Most NDJSON reads streaming at once; over it a read gets a 503 with Retry-After.
    #[arg(long, env = "PROJECTOR_MAX_STREAMS", default_value_t = 128)]
    max_streams: usize,
    /// Most live (SSE) subscriptions at once; over it a subscription gets a 503 with
    /// Retry-After.
    #[arg(long, env = "PROJECTOR_MAX_LIVE", default_value_t = 1024)]
    max_live: usize,
    /// Threads serving HTTP connections, each with its own event loop, a connection staying
    /// on one: lower latency for a few busy clients, a longer tail when the cores are
    /// oversubscribed (BENCHMARKS.md). 0: connections share the main runtime's workers.
    #[arg(long, env = "PROJECTOR_HTTP_THREADS", default_value_t = 0)]
    http_threads: usize,
}

impl HttpArgs {
    /// The limits, the default connection cap sized from `open_files`.
    fn limits(&self, open_files: u64) -> server::HttpLimits {
        server::HttpLimits {
            serve: projector::http::serve::Limits {
                max_connections: self
                    .max_connections
                    .unwrap_or_else(|| projector::http::serve::Limits::connections_for(open_files))
                    .max(1),
                header_timeout: Duration::from_secs(self.header_timeout.max(1)),
                send_timeout: Duration::from_secs(self.send_timeout.max(1)),
                drain_timeout: Duration::from_secs(self.drain_timeout),
                threads: self.http_threads,
            },
            max_streams: self.max_streams.max(1),
            max_live: self.max_live.max(1),
        }
    }
}

/// RabbitMQ: an ingest queue and a fanout exchange (the root account's).
#[derive(clap::Args)]
struct AmqpArgs {
    /// The broker, `amqp://user:password@host:5672/vhost`; without it, no AMQP.
    #[arg(long = "amqp", env = "PROJECTOR_AMQP")]
    url: Option<String>,
    /// The durable queue whose messages are appended ("": no ingest).
    #[arg(long, env = "PROJECTOR_AMQP_INGEST_QUEUE", default_value = projector::amqp::DEFAULT_INGEST_QUEUE)]
    amqp_ingest_queue: String,
    /// The durable fanout exchange every committed event is published to ("": no fanout).
    #[arg(long, env = "PROJECTOR_AMQP_FANOUT_EXCHANGE", default_value = projector::amqp::DEFAULT_FANOUT_EXCHANGE)]
    amqp_fanout_exchange: String,
    /// The dead-letter exchange (and queue) of refused messages.
    #[arg(long, env = "PROJECTOR_AMQP_DEAD_EXCHANGE", default_value = projector::amqp::DEFAULT_DEAD_EXCHANGE)]
    amqp_dead_exchange: String,
}

impl AmqpArgs {
    fn config(self) -> Option<projector::amqp::AmqpConfig> {
        Some(projector::amqp::AmqpConfig {
            url: self.url?,
            ingest_queue: self.amqp_ingest_queue,
            fanout_exchange: self.amqp_fanout_exchange,
            dead_exchange: self.amqp_dead_exchange,
        })
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: the event log, projections and the HTTP API.
    Serve {
        /// Directory for the log and the views.
        #[arg(long, env = "PROJECTOR_DATA", default_value = "data")]
        data: PathBuf,
        /// Folder watched for projection `.wasm` files.
        #[arg(long, env = "PROJECTOR_PROJECTIONS", default_value = "deploy")]
        projections: PathBuf,
        /// Address to listen on; port 0 picks a free one (the bound address is printed).
        #[arg(long, env = "PROJECTOR_LISTEN", default_value = "127.0.0.1:4600")]
        listen: SocketAddr,
        /// Seconds between keep-alive comments on idle live (SSE) subscriptions.
        #[arg(long, env = "PROJECTOR_SSE_KEEP_ALIVE", default_value_t = 15)]
        sse_keep_alive: u64,
        /// Worker threads running projections (default: the number of cores).
        #[arg(long, env = "PROJECTOR_WORKERS")]
        workers: Option<usize>,
        /// Fuel (about one wasm instruction each) a projection may use per event of a batch.
        #[arg(long, env = "PROJECTOR_FUEL_PER_EVENT", default_value_t = Limits::default().fuel_per_event)]
        fuel_per_event: u64,
        /// Fuel a projection may use per batch, on top of the per-event fuel.
        #[arg(long, env = "PROJECTOR_FUEL_PER_BATCH", default_value_t = Limits::default().fuel_base)]
        fuel_per_batch: u64,
        /// Most memory a projection may grow to, in MiB.
        #[arg(long, env = "PROJECTOR_GUEST_MEMORY_MIB", default_value_t = 128)]
        guest_memory_mib: usize,
        /// Most bytes a projection may write to its view per batch, in MiB.
        #[arg(long, env = "PROJECTOR_GUEST_WRITES_MIB", default_value_t = 64)]
        guest_writes_mib: u64,
        /// Wall-clock limit of one call into a projection, in seconds.
        #[arg(long, env = "PROJECTOR_GUEST_DEADLINE", default_value_t = 10)]
        guest_deadline: u64,
        /// Changes each projection keeps for resuming readers of its change feed
        /// (`GET /projections/{name}/changes`).
        #[arg(long, env = "PROJECTOR_CHANGE_RETENTION", default_value_t = projector::views::feed::DEFAULT_RETENTION)]
        change_retention: usize,
        #[command(flatten)]
        http: HttpArgs,
        #[command(flatten)]
        amqp: AmqpArgs,
        /// `keys`: every request but GET /health needs an API key with the route's scope;
        /// `none`: open. Default: `none` on a loopback address, `keys` otherwise.
        #[arg(long, env = "PROJECTOR_AUTH", value_enum)]
        auth: Option<AuthMode>,
        /// Allow `--auth none` on an address other hosts can reach.
        #[arg(long, env = "PROJECTOR_INSECURE")]
        insecure: bool,
    },
    /// Show the projections of a running server: state, version, position, lag, rate,
    /// rebuilds and faults.
    Status {
        /// One projection in detail; all of them as a table without.
        name: Option<String>,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Rebuild a projection from position 0 beside the serving version, and follow it with a
    /// progress bar until it is swapped in.
    Rebuild {
        name: String,
        /// Start the rebuild and return at once.
        #[arg(long)]
        detach: bool,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Append one event to a stream.
    Append {
        stream: String,
        /// The event's type.
        #[arg(long = "type")]
        event_type: String,
        /// The event's payload, JSON.
        #[arg(long)]
        data: String,
        /// The event's metadata, JSON.
        #[arg(long)]
        metadata: Option<String>,
        /// `any`, `no_stream`, `exists`, or the stream's current revision.
        #[arg(long)]
        expected_revision: Option<String>,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Print a stream's events (`$all` for the whole log, `$ce-<category>` for a category).
    Read {
        stream: String,
        /// First revision (of a stream) or position (of `$all` or a category).
        #[arg(long)]
        from: Option<u64>,
        /// Keep printing events as they are appended, until interrupted.
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Scaffold a projection: a subscription, an `apply`, a native test (a Rust crate, or a
    /// JavaScript or Python folder).
    New {
        name: String,
        /// Where to create the projection's folder.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The `sdk/` folder of a Projector checkout (default: the source tree this binary was
        /// built from); JavaScript and Python use the `sdk-js/` and `sdk-py/` beside it.
        #[arg(long)]
        sdk: Option<PathBuf>,
        /// The projection's language.
        #[arg(long, value_enum, default_value = "rust")]
        lang: scaffold::Language,
    },
    /// Build a projection to a component and print the `.wasm`'s path: a Rust crate (`cargo
    /// build --release --target wasm32-wasip2`), or a JavaScript or Python projection
    /// (`scripts/build-projection`, into `DIR/target/`).
    Build {
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Deploy a component to a running server (`PUT /projections/{name}`).
    Deploy {
        file: PathBuf,
        /// The projection's name (default: the file's name without `.wasm`, `_` as `-`).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Print a shell completion script.
    Completions { shell: clap_complete::Shell },
    /// API keys: create, list, revoke (admin scope).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Accounts (admin scope).
    Accounts {
        #[command(subcommand)]
        command: AccountsCommand,
    },
    /// Persistent subscriptions: create, list, show, delete, consume.
    Subscriptions {
        #[command(subcommand)]
        command: SubscriptionsCommand,
    },
}

#[derive(Subcommand)]
enum SubscriptionsCommand {
    /// Create a subscription, or change its settings.
    Create {
        name: String,
        /// `$all`, a stream, or `$ce-<category>`.
        #[arg(long)]
        source: String,
        /// Only events of these types (comma-separated).
        #[arg(long, value_delimiter = ',')]
        event_types: Vec<String>,
        /// `start`, `end`, or a position (the first delivered).
        #[arg(long, default_value = "start")]
        from: String,
        #[arg(long, default_value_t = 1000)]
        max_in_flight: u32,
        #[arg(long, default_value_t = 30_000)]
        ack_timeout_ms: u64,
        #[arg(long, default_value_t = 10)]
        max_deliveries: u32,
        /// `round_robin` or `pinned` (each stream to one consumer).
        #[arg(long, default_value = "round_robin")]
        strategy: String,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// List the subscriptions with their floor, in flight, parked, consumers and lag.
    List {
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// One subscription's settings and state.
    Show {
        name: String,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Delete a subscription and its state.
    Delete {
        name: String,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Print events as they are delivered, until interrupted.
    Consume {
        name: String,
        /// Acknowledge each batch once printed (otherwise they are delivered again after
        /// the subscription's ack timeout).
        #[arg(long)]
        ack: bool,
        /// The consumer's name (for `pinned` subscriptions).
        #[arg(long)]
        consumer: Option<String>,
        /// Stop after this many events.
        #[arg(long)]
        limit: Option<u64>,
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key and print its token, which is shown this once.
    Create {
        #[arg(long, default_value = projector::auth::ROOT)]
        account: String,
        /// Comma-separated: read, append, deploy, admin.
        #[arg(long, value_enum, value_delimiter = ',', required = true)]
        scopes: Vec<Scope>,
        #[arg(long)]
        expires_in_days: Option<u64>,
        #[arg(long)]
        label: Option<String>,
        /// Write the key into this data directory directly, with the server stopped (for
        /// recovery), instead of asking a running server.
        #[arg(long)]
        data: Option<PathBuf>,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// List keys (never their secrets).
    List {
        #[arg(long)]
        account: Option<String>,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Revoke a key: refused from the next request on; its live subscriptions close.
    Revoke {
        id: String,
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

#[derive(Subcommand)]
enum AccountsCommand {
    /// List the accounts and their limits.
    List {
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Create an account: a tenant with its own streams, projections and views.
    Create {
        name: String,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Replace an account's limits (a limit left out takes its default).
    Limits {
        name: String,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

#[derive(clap::Args)]
struct LimitArgs {
    /// Live subscriptions the account may hold at once.
    #[arg(long, default_value_t = projector::account::DEFAULT_LIVE_SUBSCRIPTIONS)]
    live_subscriptions: u32,
    /// Bytes of view storage the account's projections may take together (default: no limit).
    #[arg(long)]
    view_bytes: Option<u64>,
}

impl LimitArgs {
    fn limits(&self) -> projector::account::Limits {
        projector::account::Limits {
            live_subscriptions: self.live_subscriptions,
            view_bytes: self.view_bytes,
        }
    }
}

#[derive(clap::Args)]
struct RemoteArgs {
    /// The server's base URL.
    #[arg(
        long,
        env = "PROJECTOR_SERVER",
        default_value = "http://127.0.0.1:4600"
    )]
    server: String,
    /// Print the server's JSON instead of text.
    #[arg(long)]
    json: bool,
    /// The API key to send (a server with `--auth keys` needs one).
    #[arg(long, env = "PROJECTOR_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl RemoteArgs {
    fn remote(&self) -> anyhow::Result<Remote> {
        Ok(Remote::new(&self.server, self.json, self.token.as_deref())?)
    }
}

fn main() -> anyhow::Result<()> {
    limit_malloc_arenas();
    // Only a test build (feature `failpoints`) has any: the points named in `FAILPOINTS`.
    projector::failpoint::setup();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run())
}

/// glibc gives each thread that allocates under contention its own 64 MiB arena and keeps what
/// is freed there; batches are read on one thread and freed on another. A rebuild of
/// `order-summary` over 3,000,000 events peaked at 371 MiB with the default arenas and at
/// 258 MiB with four, 10% slower (BENCHMARKS.md). Called before any other thread exists.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; no other thread runs yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
    match cli.command {
        Command::Serve {
            data,
            projections,
            listen,
            sse_keep_alive,
            workers,
            fuel_per_event,
            fuel_per_batch,
            guest_memory_mib,
            guest_writes_mib,
            guest_deadline,
            change_retention,
            http,
            amqp,
            auth,
            insecure,
        } => {
            let loopback = listen.ip().is_loopback();
            let auth = auth.unwrap_or(if loopback {
                AuthMode::None
            } else {
                AuthMode::Keys
            });
            if auth == AuthMode::None && !loopback && !insecure {
                anyhow::bail!(
                    "refusing --auth none on {listen}, which other hosts can reach: use --auth keys, \
                     or add --insecure"
                );
            }
            let config = ServeConfig {
                data,
                projections,
                listen,
                sse_keep_alive: Duration::from_secs(sse_keep_alive.max(1)),
                workers: workers
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
                limits: Limits {
                    fuel_base: fuel_per_batch,
                    fuel_per_event,
                    deadline: Duration::from_secs(guest_deadline.max(1)),
                    memory_bytes: guest_memory_mib.saturating_mul(1024 * 1024),
                    written_bytes: guest_writes_mib.saturating_mul(1024 * 1024),
                },
                // Before sizing the connection cap from it.
                http: http.limits(projector::http::serve::raise_open_files_limit()),
                auth,
                change_retention: change_retention.max(1),
                amqp: amqp.config(),
            };
            let stop = server::shutdown_signal().context("installing the signal handlers")?;
            server::serve(config, stop)
                .await
                .context("projector serve")?;
        }
        Command::Status { name, remote } => remote.remote()?.status(name.as_deref()).await?,
        Command::Rebuild {
            name,
            detach,
            remote,
        } => remote.remote()?.rebuild(&name, detach).await?,
        Command::Append {
            stream,
            event_type,
            data,
            metadata,
            expected_revision,
            remote,
        } => {
            remote
                .remote()?
                .append(
                    &stream,
                    &event_type,
                    &data,
                    metadata.as_deref(),
                    expected_revision.as_deref(),
                )
                .await?
        }
        Command::Read {
            stream,
            from,
            follow,
            remote,
        } => remote.remote()?.read(&stream, from, follow).await?,
        Command::Keys { command } => keys(command).await?,
        Command::New {
            name,
            dir,
            sdk,
            lang,
        } => {
            let sdk = scaffold::sdk_path(sdk.as_deref())?;
            if lang == scaffold::Language::Rust {
                let root = scaffold::new(&name, &dir, &sdk)?;
                println!("created {}", root.display());
                println!("  test:   cd {} && cargo test", root.display());
                println!("  build:  projector build {}", root.display());
                println!(
                    "  deploy: projector deploy {}/target/wasm32-wasip2/release/{}.wasm --name {name}",
                    root.display(),
                    name.replace('-', "_")
                );
            } else {
                let root = scaffold::new_polyglot(&name, &dir, &sdk, lang)?;
                println!("created {}", root.display());
                let test = match lang {
                    scaffold::Language::Js => "npm install && node --test test/",
                    _ => "pytest   (from the checkout's .venv: scripts/setup-python)",
                };
                println!("  test:   cd {} && {test}", root.display());
                println!("  build:  projector build {}", root.display());
                println!(
                    "  deploy: projector deploy {}/target/{name}.wasm",
                    root.display()
                );
            }
        }
        Command::Build { dir } => {
            let wasm = tokio::task::spawn_blocking(move || scaffold::build(&dir)).await??;
            println!("{}", wasm.display());
        }
        Command::Deploy { file, name, remote } => {
            let name = match name {
                Some(name) => name,
                None => file
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .map(|s| s.replace('_', "-"))
                    .context("name the projection with --name")?,
            };
            let wasm =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            remote.remote()?.deploy(&name, wasm).await?
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "projector",
                &mut std::io::stdout(),
            );
        }
        Command::Accounts { command } => match command {
            AccountsCommand::List { remote } => remote.remote()?.list_accounts().await?,
            AccountsCommand::Create {
                name,
                limits,
                remote,
            } => {
                remote
                    .remote()?
                    .create_account(&name, &limits.limits())
                    .await?
            }
            AccountsCommand::Limits {
                name,
                limits,
                remote,
            } => remote.remote()?.set_limits(&name, &limits.limits()).await?,
        },
        Command::Subscriptions { command } => subscriptions(command).await?,
    }
    Ok(())
}

async fn subscriptions(command: SubscriptionsCommand) -> anyhow::Result<()> {
    match command {
        SubscriptionsCommand::Create {
            name,
            source,
            event_types,
            from,
            max_in_flight,
            ack_timeout_ms,
            max_deliveries,
            strategy,
            remote,
        } => {
            let from = match from.parse::<u64>() {
                Ok(position) => serde_json::json!(position),
                Err(_) => serde_json::json!(from),
            };
            let settings: projector::subscriptions::Settings =
                serde_json::from_value(serde_json::json!({
                    "source": source,
                    "event_types": event_types,
                    "from": from,
                    "max_in_flight": max_in_flight,
                    "ack_timeout_ms": ack_timeout_ms,
                    "max_deliveries": max_deliveries,
                    "strategy": strategy,
                }))
                .context("the subscription's settings")?;
            remote.remote()?.put_subscription(&name, &settings).await?
        }
        SubscriptionsCommand::List { remote } => remote.remote()?.list_subscriptions().await?,
        SubscriptionsCommand::Show { name, remote } => {
            remote.remote()?.show_subscription(&name).await?
        }
        SubscriptionsCommand::Delete { name, remote } => {
            remote.remote()?.delete_subscription(&name).await?
        }
        SubscriptionsCommand::Consume {
            name,
            ack,
            consumer,
            limit,
            remote,
        } => {
            remote
                .remote()?
                .consume(&name, consumer.as_deref(), ack, limit)
                .await?
        }
    }
    Ok(())
}

async fn keys(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Create {
            account,
            scopes,
            expires_in_days,
            label,
            data,
            remote,
        } => {
            let new = NewKey {
                account,
                scopes,
                expires_in_days,
                label,
            };
            match data {
                Some(data) => {
                    let store = tokio::task::spawn_blocking(move || KeyStore::open(&data))
                        .await?
                        .context("opening the key store (is the server still running?)")?;
                    let (key, token) = store.create(&new)?;
                    let mut key = serde_json::to_value(key)?;
                    key["token"] = token.into();
                    projector::client::print_key(&key, remote.json)?;
                }
                None => remote.remote()?.create_key(&new).await?,
            }
        }
        KeysCommand::List { account, remote } => {
            remote.remote()?.list_keys(account.as_deref()).await?
        }
        KeysCommand::Revoke { id, remote } => remote.remote()?.revoke_key(&id).await?,
    }
    Ok(())
}
