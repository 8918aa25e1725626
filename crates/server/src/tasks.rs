//! Background work: the expiry sweep and the touch flush.
//!
//! Both run on tokio timers and stop when the [`Tasks`] handle is shut down or dropped
//! (a drop guard), so no task outlives the server.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::service::Service;

/// How often expired sessions are ended and old tombstones dropped. Validation does not
/// depend on it (a session is ended at its deadline whether swept or not); it bounds how
/// long an expired session's memory is held.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The running background tasks.
#[derive(Debug)]
pub struct Tasks {
    stop: watch::Sender<bool>,
    handles: Vec<JoinHandle<()>>,
}

impl Tasks {
    /// Starts the sweeper, and the flusher with period `flush_every`.
    pub fn start(service: Arc<Service>, flush_every: Duration) -> Tasks {
        let (stop, stopped) = watch::channel(false);
        let sweeper = {
            let service = service.clone();
            every(SWEEP_EVERY, stopped.clone(), move || {
                let service = service.clone();
                async move {
                    match service.store.sweep(service.now()).await {
                        Ok(r) if r.expired + r.purged > 0 => {
                            tracing::debug!(expired = r.expired, purged = r.purged, "swept")
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "sweep failed"),
                    }
                }
            })
        };
        let flusher = every(flush_every, stopped, move || {
            let service = service.clone();
            async move {
                if let Err(e) = service.store.flush_touches().await {
                    tracing::warn!(error = %e, "touch flush failed");
                }
            }
        });
        Tasks {
            stop,
            handles: vec![sweeper, flusher],
        }
    }

    /// Stops the tasks and waits for a run in progress to finish.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for h in self.handles.drain(..) {
            let _ = h.await;
        }
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

fn every<F, Fut>(period: Duration, mut stopped: watch::Receiver<bool>, mut run: F) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            tokio::select! {
                _ = ticks.tick() => run().await,
                _ = stopped.changed() => return,
            }
        }
    })
}
