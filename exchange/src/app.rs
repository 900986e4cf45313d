//! Putting the exchange together: state from a configuration, a listener, the server task,
//! and shutdown. `main` and the integration tests both start the exchange through here.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::clock::Clock;
use crate::config::Config;
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::state::AppState;

/// The default configuration compiled into the binary (config/default.toml).
pub const DEFAULT_CONFIG: &str = include_str!("../../config/default.toml");

/// Builds the shared state: opens the ledger and registers metrics.
pub fn build_state(config: Config, clock: Clock) -> std::io::Result<Arc<AppState>> {
    let metrics = Metrics::new();
    let batch = metrics.ledger_batch.clone();
    let ledger = Ledger::open(&config.server.ledger_path, move |n| batch.observe(n as f64))?;
    Ok(Arc::new(AppState::new(config, ledger, metrics, clock)))
}

/// A running exchange.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    shutdown: Option<oneshot::Sender<()>>,
    join: JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish, and waits for the server to end.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let served = (&mut self.join)
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        // Auction and attempt records ride along with durable ones; make the tail durable.
        if let Err(e) = self.state.ledger.flush().await {
            tracing::error!(error = %e, "ledger flush at shutdown failed");
        }
        served
    }
}

/// Binds `config.server.listen` and serves in a task.
pub async fn start(config: Config, clock: Clock) -> std::io::Result<Running> {
    let listener = TcpListener::bind(config.server.listen).await?;
    let addr = listener.local_addr()?;
    let state = build_state(config, clock)?;
    let (tx, rx) = oneshot::channel::<()>();
    let st = state.clone();
    let join = tokio::spawn(async move {
        crate::server::serve(listener, st, async {
            let _ = rx.await;
        })
        .await
    });
    Ok(Running {
        addr,
        state,
        shutdown: Some(tx),
        join,
    })
}
