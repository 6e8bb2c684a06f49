//! Process signals: SIGTERM/SIGINT start a graceful shutdown, SIGHUP asks for a config reload.

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Cancels `shutdown` on the first SIGTERM or SIGINT; sends on the returned channel at every
/// SIGHUP. The listening task ends when `shutdown` is cancelled.
pub fn watch_signals(shutdown: CancellationToken) -> std::io::Result<mpsc::Receiver<()>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (reload_tx, reload_rx) = mpsc::channel(1);
    // Owned: ends with `shutdown`.
    #[allow(clippy::disallowed_methods)]
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); shutdown.cancel(); }
                _ = int.recv() => { tracing::info!("SIGINT: shutting down"); shutdown.cancel(); }
                _ = hup.recv() => { let _ = reload_tx.try_send(()); }
            }
        }
    });
    Ok(reload_rx)
}
