//! Background work: the expiry sweep and the touch flush.
//!
//! Both run on tokio timers and stop when the [`Tasks`] handle is shut down or dropped
//! (a drop guard), so no task outlives the server.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::directory::FileDirectory;
use crate::service::Service;

/// How often the users file is checked for changes (SIGHUP reloads at once).
pub const USERS_POLL_EVERY: Duration = Duration::from_secs(2);

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
    /// Starts the sweeper, the flusher with period `flush_every`, and, with a users file,
    /// its watcher.
    pub fn start(
        service: Arc<Service>,
        flush_every: Duration,
        users: Option<Arc<FileDirectory>>,
    ) -> Tasks {
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
        let flusher = every(flush_every, stopped.clone(), {
            let service = service.clone();
            move || {
                let service = service.clone();
                async move {
                    if let Err(e) = service.store.flush_touches().await {
                        tracing::warn!(error = %e, "touch flush failed");
                    }
                }
            }
        });
        let mut handles = vec![sweeper, flusher];
        if let Some(users) = users {
            handles.push(tokio::spawn(watch_users(users, service, stopped)));
        }
        Tasks { stop, handles }
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

/// The users file's identity for change detection: modification time and length.
fn stamp(path: &std::path::Path) -> Option<(std::time::SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Ends every session of `users` with reason `user_disabled`.
async fn end_sessions_of(service: &Service, users: Vec<String>) {
    for user in users {
        match service
            .end_user(&user, sessiond_core::EndReason::UserDisabled)
            .await
        {
            Ok(n) if n > 0 => tracing::info!(
                user,
                sessions = n,
                "user disabled or removed: sessions ended"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(user, error = %e, "could not end a disabled user's sessions"),
        }
    }
}

/// Reloads the users file on SIGHUP and when it changes; users who lose access lose their
/// sessions. At start, sessions of users already disabled are ended too.
async fn watch_users(
    users: Arc<FileDirectory>,
    service: Arc<Service>,
    mut stopped: watch::Receiver<bool>,
) {
    end_sessions_of(&service, users.disabled_users()).await;
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut seen = stamp(users.path());
    let mut ticks = tokio::time::interval(USERS_POLL_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let forced = tokio::select! {
            _ = ticks.tick() => false,
            Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
            _ = stopped.changed() => return,
        };
        let now = stamp(users.path());
        if !forced && now == seen {
            continue;
        }
        seen = now;
        match users.reload() {
            Ok(lost) => {
                tracing::info!(file = %users.path().display(), "users reloaded");
                end_sessions_of(&service, lost).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "users file not reloaded; the previous users stay in force")
            }
        }
    }
}
