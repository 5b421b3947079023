//! The running server: opens the log, serves HTTP, and shuts down without losing a write.
//!
//! Shutdown order matters: stop accepting, end live subscriptions, let in-flight requests
//! finish (each append is answered only once durable), then let the log writer drain and stop.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::auth::{AuthMode, KeyStore, NewKey, Scope};
use crate::http::{self, AppState};
use crate::log::{Log, StorageError};
use crate::runtime::Limits;
use crate::runtime::{EngineError, Runtime};
use crate::subscriptions::{SubscriptionError, Subscriptions};
use crate::tenants::{Layout, TenantConfig, TenantError, Tenants};

/// The example projections, built from `projections/` to components by the build script.
const EXAMPLES: &[(&str, &[u8])] = &[
    (
        "stream-stats",
        include_bytes!(concat!(env!("PROJECTOR_GUESTS_DIR"), "/stream_stats.wasm")),
    ),
    (
        "category-index",
        include_bytes!(concat!(
            env!("PROJECTOR_GUESTS_DIR"),
            "/category_index.wasm"
        )),
    ),
    (
        "order-summary",
        include_bytes!(concat!(env!("PROJECTOR_GUESTS_DIR"), "/order_summary.wasm")),
    ),
];

pub struct ServeConfig {
    /// Directory holding `log.redb`, `auth.redb`, views and the compile cache (created when
    /// missing).
    pub data: PathBuf,
    /// The folder projections are deployed into (created when missing).
    pub projections: PathBuf,
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    pub sse_keep_alive: Duration,
    /// Worker threads running projections.
    pub workers: usize,
    pub limits: Limits,
    pub http: HttpLimits,
    /// Whether requests need an API key.
    pub auth: crate::auth::AuthMode,
    /// Changes each serving projection keeps for its change feed.
    pub change_retention: usize,
    /// The RabbitMQ ingest and fanout, when a broker is given.
    pub amqp: Option<crate::amqp::AmqpConfig>,
}

/// What the HTTP server lets clients hold.
#[derive(Clone, Debug)]
pub struct HttpLimits {
    /// Connections, timeouts and the shutdown drain.
    pub serve: http::serve::Limits,
    /// NDJSON reads streaming at once.
    pub max_streams: usize,
    /// Live subscriptions at once.
    pub max_live: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot create the projections folder {path}: {source}")]
    Projections {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tenant(#[from] TenantError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
    #[error("a start-up task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Keys(#[from] crate::auth::StoreError),
    #[error(transparent)]
    Subscriptions(#[from] SubscriptionError),
}

/// Serves until `stop` resolves. Prints `listening on http://ADDR` to stdout once the socket
/// is bound, which is how scripts and tests learn a port chosen by the OS.
pub async fn serve(
    config: ServeConfig,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    seed_projections(&config.projections).map_err(|source| ServeError::Projections {
        path: config.projections.display().to_string(),
        source,
    })?;
    let data = config.data.clone();
    let (log, writer) = tokio::task::spawn_blocking(move || Log::open(&data)).await??;
    let head = *log.head().borrow();
    tracing::info!(data = %config.data.display(), head, "log opened");
    let keys = {
        let data = config.data.clone();
        tokio::task::spawn_blocking(move || KeyStore::open(&data)).await??
    };
    let layout = Layout {
        data: config.data.clone(),
        projections: config.projections.clone(),
    };
    let tenants = {
        let (workers, limits, retention) = (
            config.workers,
            config.limits.clone(),
            config.change_retention,
        );
        let (log, accounts) = (log.clone(), keys.accounts());
        let tokio = tokio::runtime::Handle::current();
        let start = move || -> Result<Tenants, ServeError> {
            let runtime = Arc::new(Runtime::new(&layout.cache(), limits)?);
            let config = TenantConfig {
                layout,
                workers,
                runtime,
                max_batch: crate::scheduler::DEFAULT_BATCH,
                change_retention: retention,
                tokio,
            };
            Ok(Tenants::start(&log, &accounts, config)?)
        };
        Arc::new(tokio::task::spawn_blocking(start).await??)
    };
    println!("auth: {}", config.auth);
    if config.auth == AuthMode::Keys && keys.is_empty() {
        let path = bootstrap_root_key(&keys, &config.data)?;
        println!("root key written to {}", path.display());
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}");

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let subscriptions = {
        let (data, tenants, shutdown) = (config.data.clone(), tenants.clone(), shutdown_rx.clone());
        let log_of = move |account: &str| tenants.get(account).map(|t| t.log.clone());
        Arc::new(
            tokio::task::spawn_blocking(move || Subscriptions::open(&data, log_of, shutdown))
                .await??,
        )
    };
    let amqp = config.amqp.clone().map(|amqp| {
        crate::amqp::start(
            amqp,
            log.clone(),
            subscriptions.store(),
            shutdown_rx.clone(),
        )
    });
    let (broker, amqp_task) = amqp.unzip();
    let app = http::router(AppState::new(http::Shared {
        log,
        tenants: tenants.clone(),
        shutdown: shutdown_rx.clone(),
        sse_keep_alive: config.sse_keep_alive,
        streams: Arc::new(tokio::sync::Semaphore::new(config.http.max_streams)),
        live: Arc::new(tokio::sync::Semaphore::new(config.http.max_live)),
        live_bytes: Arc::new(tokio::sync::Semaphore::new(http::live::LIVE_BYTES)),
        auth: config.auth,
        keys,
        subscriptions,
        broker,
        metrics: crate::telemetry::install(),
    }));
    // The stop task: owned by the runtime, it ends when `stop` resolves, which also ends the
    // live subscriptions (they watch the same flag).
    tokio::spawn(async move {
        stop.await;
        tracing::info!("shutting down");
        shutdown_tx.send_replace(true);
    });
    http::serve::serve(listener, app, config.http.serve.clone(), shutdown_rx).await;
    // The AMQP ingest settles the appends it has in flight, then lets go of its log handle.
    if let Some(task) = amqp_task
        && tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .is_err()
    {
        tracing::warn!("the AMQP connection did not stop within 30 s");
    }
    // The router is gone. Stop the projections (their views' checkpoints made durable), then
    // the writer: with every log handle dropped it commits what is queued and stops.
    tokio::task::spawn_blocking(move || tenants.shutdown()).await?;
    tokio::task::spawn_blocking(move || writer.join()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// With auth on and no key yet: a root key with the admin scope, its token written to
/// `<data>/root.token` (mode 0600) and never printed.
fn bootstrap_root_key(keys: &KeyStore, data: &Path) -> Result<PathBuf, ServeError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let (key, token) = keys.create(&NewKey {
        account: crate::auth::ROOT.to_owned(),
        scopes: vec![Scope::Admin, Scope::Deploy, Scope::Append, Scope::Read],
        expires_in_days: None,
        label: Some("root key made at first start".to_owned()),
    })?;
    let path = data.join("root.token");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)?;
    // An older file keeps its mode on open: set it.
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    file.write_all(format!("{token}\n").as_bytes())?;
    file.sync_all()?;
    tracing::info!(key = %key.id, path = %path.display(), "made the root key");
    Ok(path)
}

/// Creates the projections folder if it does not exist yet, with the example projections in
/// it, so a fresh server has something to show. An existing folder is left as it is.
fn seed_projections(folder: &Path) -> std::io::Result<()> {
    if folder.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(folder)?;
    for (name, wasm) in EXAMPLES {
        std::fs::write(folder.join(format!("{name}.wasm")), wasm)?;
    }
    tracing::info!(folder = %folder.display(), "created the projections folder with the examples");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, not when
/// it is first polled, so a signal sent right after start-up is not lost (call it before
/// printing the address).
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}
