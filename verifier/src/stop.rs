//! [`StopSignals`]: SIGINT and SIGTERM end a run through its normal end, so the private servers,
//! namespaces and processes it started stop with it instead of outliving it. (Their cleanup runs
//! on drop, which a signal's default action would skip.)

use tokio::signal::unix::{Signal, SignalKind, signal};

/// The signals that end a run early. Listened for from the start of the run: one that arrives
/// while the servers start is kept, and ends the run as soon as they have started.
pub struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
}

impl StopSignals {
    /// Starts listening: from here on neither signal ends the process by itself.
    pub fn listen() -> std::io::Result<Self> {
        Ok(Self { interrupt: signal(SignalKind::interrupt())?, terminate: signal(SignalKind::terminate())? })
    }

    /// Waits for the first of them; its name.
    pub async fn received(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}
