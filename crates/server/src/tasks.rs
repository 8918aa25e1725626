//! Background work: the expiry sweep and the touch flush.
//!
//! Both run on tokio timers and stop when the [`Tasks`] handle is shut down or dropped
//! (a drop guard), so no task outlives the server. A step that keeps failing (its store is
//! down) is logged at its first failure, once a minute while the failures go on, and when
//! it works again (`Failures`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use sessiond_store::StoreError;

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
            every("sweep", SWEEP_EVERY, stopped.clone(), move || {
                let service = service.clone();
                async move {
                    let r = service.store.sweep(service.now()).await?;
                    if r.expired + r.purged > 0 {
                        tracing::debug!(expired = r.expired, purged = r.purged, "swept");
                    }
                    Ok(())
                }
            })
        };
        let flusher = every("touch flush", flush_every, stopped.clone(), {
            let service = service.clone();
            move || {
                let service = service.clone();
                async move { service.store.flush_touches().await.map(|_| ()) }
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

/// Runs `run` every `period` until stopped, and logs its failures as [`Failures`] says.
fn every<F, Fut>(
    what: &'static str,
    period: Duration,
    mut stopped: watch::Receiver<bool>,
    mut run: F,
) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), StoreError>> + Send,
{
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        let mut failures = Failures::default();
        loop {
            tokio::select! {
                _ = ticks.tick() => {
                    let result = run().await;
                    let now = tokio::time::Instant::now().into_std();
                    match (failures.note(result.is_err(), now), result) {
                        (Note::First, Err(e)) => tracing::warn!(
                            error = %e,
                            "{what} failed; it is retried every {period:?}, and logged once a \
                             minute while it fails"
                        ),
                        (Note::Still { failures }, Err(e)) => {
                            tracing::warn!(error = %e, failures, "{what} still failing")
                        }
                        (Note::Recovered { failures, after }, _) => tracing::info!(
                            failures,
                            after_s = after.as_secs(),
                            "{what} works again"
                        ),
                        _ => {}
                    }
                }
                _ = stopped.changed() => return,
            }
        }
    })
}

/// How often a background step that keeps failing (a store that is down, say) is logged
/// again, after its first failure.
const FAILURE_LOGGED_EVERY: Duration = Duration::from_secs(60);

/// A background step's run of failures, so that a store down for an hour logs about 60
/// lines, not one per attempt: the first failure, then one line a minute with how many
/// failed since, then one line when it works again. `None` while the step works.
#[derive(Debug, Default)]
struct Failures(Option<Run>);

/// A run of failures going on.
#[derive(Debug)]
struct Run {
    /// When it began.
    since: Instant,
    /// When a line about it was last logged.
    logged: Instant,
    /// Failures since that line.
    unlogged: u64,
    /// Failures in the whole run.
    total: u64,
}

/// What [`Failures::note`] says to log.
#[derive(Debug, PartialEq, Eq)]
enum Note {
    Nothing,
    /// The first failure after a success (or at start).
    First,
    /// Still failing, a minute after the last line: `failures` since that line.
    Still {
        failures: u64,
    },
    /// Works again after `failures` failures over `after`.
    Recovered {
        failures: u64,
        after: Duration,
    },
}

impl Failures {
    fn note(&mut self, failed: bool, now: Instant) -> Note {
        let Some(run) = &mut self.0 else {
            if !failed {
                return Note::Nothing;
            }
            self.0 = Some(Run {
                since: now,
                logged: now,
                unlogged: 0,
                total: 1,
            });
            return Note::First;
        };
        if !failed {
            let recovered = Note::Recovered {
                failures: run.total,
                after: now.saturating_duration_since(run.since),
            };
            self.0 = None;
            return recovered;
        }
        run.total += 1;
        run.unlogged += 1;
        if now.saturating_duration_since(run.logged) < FAILURE_LOGGED_EVERY {
            return Note::Nothing;
        }
        run.logged = now;
        Note::Still {
            failures: std::mem::take(&mut run.unlogged),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_of_failures_is_logged_at_its_start_once_a_minute_and_at_its_end() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut f = Failures::default();
        assert_eq!(f.note(false, at(0)), Note::Nothing, "success is quiet");
        assert_eq!(f.note(true, at(1)), Note::First);
        for s in 2..61 {
            assert_eq!(f.note(true, at(s)), Note::Nothing, "second {s}");
        }
        assert_eq!(f.note(true, at(61)), Note::Still { failures: 60 });
        assert_eq!(f.note(true, at(62)), Note::Nothing);
        assert_eq!(
            f.note(false, at(63)),
            Note::Recovered {
                failures: 62,
                after: Duration::from_secs(62)
            }
        );
        assert_eq!(f.note(false, at(64)), Note::Nothing);
        // A new run starts over.
        assert_eq!(f.note(true, at(65)), Note::First);
        assert_eq!(
            f.note(false, at(66)),
            Note::Recovered {
                failures: 1,
                after: Duration::from_secs(1)
            }
        );
    }
}
