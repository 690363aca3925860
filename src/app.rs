//! Builds the daemon from `Settings` (store, upstream client, budget, poller,
//! dispatcher, HTTP listener) and runs it until shutdown, then drains it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, AppState, UpstreamState};
use crate::config::Settings;
use crate::poller::budget::{Budget, BudgetSettings};
use crate::poller::history::History;
use crate::poller::Poller;
use crate::store::pruner::Pruner;
use crate::store::writer::{self, Signals};
use crate::store::{self as store_mod, now_ms, redact_url, DynStore};
use crate::upstream::UpstreamClient;
use crate::webhook::dispatcher::Dispatcher;

pub struct Daemon {
    settings: Arc<Settings>,
    listener: TcpListener,
    store: DynStore,
    signals: Arc<Signals>,
    /// One budget per upstream, in the order of `settings.resolved`.
    budgets: Vec<Arc<Budget>>,
    /// How long jobs took, as the store kept it.
    history: Arc<History>,
}

impl Daemon {
    /// Open the store (creating and migrating it) and bind the listener.
    pub async fn build(settings: Settings) -> anyhow::Result<Daemon> {
        // Before anything can count: events recorded earlier would be dropped.
        crate::metrics::install();
        let store = store_mod::open(&settings.store.url)
            .await
            .with_context(|| format!("opening the store at {}", redact_url(&settings.store.url)))?;
        let history = Arc::new(History::new(
            settings.poller.learn_by.clone(),
            settings.poller.learn_after,
        ));
        history.load(
            store
                .load_durations()
                .await
                .context("reading the learned job durations")?,
        );
        let listener = TcpListener::bind(settings.api.listen)
            .await
            .with_context(|| format!("api.listen: cannot listen on {}", settings.api.listen))?;
        let budgets = settings
            .resolved
            .iter()
            .map(|d| {
                let u = &d.settings;
                Arc::new(Budget::new(BudgetSettings {
                    max_requests_per_second: u.max_requests_per_second,
                    burst: u.burst,
                    max_in_flight: u.max_in_flight,
                    min_retry_after: u.min_retry_after,
                    max_retry_after: u.max_retry_after,
                    auth_probe_interval: u.auth_probe_interval,
                    rate_recovery_step: u.rate_recovery_step,
                }))
            })
            .collect();
        Ok(Daemon {
            settings: Arc::new(settings),
            listener,
            store,
            signals: Signals::new(),
            budgets,
            history,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serve until `shutdown` is cancelled; then stop taking requests, let in-flight
    /// polls and deliveries finish within `api.shutdown_grace`, commit what is queued.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Daemon {
            settings,
            listener,
            store,
            signals,
            budgets,
            history,
        } = self;
        let (writer, writer_done) = writer::spawn(store.clone(), signals.clone());
        // One client, budget and poller per upstream; the first also ends the
        // watches of every kind whose deadline passed.
        let mut pollers = Vec::new();
        let mut upstreams = Vec::new();
        for (i, (def, budget)) in settings.resolved.iter().zip(&budgets).enumerate() {
            let client =
                Arc::new(UpstreamClient::new(def).with_context(|| {
                    format!("building the HTTP client of upstream {:?}", def.name)
                })?);
            upstreams.push(UpstreamState {
                name: def.name.clone(),
                base_url: redact_url(def.settings.base_url.as_str()),
                kinds: client.kinds().collect(),
                budget: budget.clone(),
            });
            pollers.push(Arc::new(Poller::new(
                &settings,
                def,
                store.clone(),
                client,
                budget.clone(),
                writer.clone(),
                signals.clone(),
                shutdown.clone(),
                i == 0,
                history.clone(),
            )));
        }
        // Leases are released and overdue polls spread once, over the rate of
        // every upstream together.
        let rate: f64 = settings
            .resolved
            .iter()
            .map(|d| d.settings.max_requests_per_second)
            .sum();
        if let Some(first) = pollers.first() {
            first
                .recover(now_ms(), rate)
                .await
                .context("releasing leases and spreading overdue polls")?;
        }
        let dispatcher = Arc::new(
            Dispatcher::new(
                &settings.webhooks,
                settings.store.lease,
                store.clone(),
                writer,
                signals.clone(),
            )
            .context("building the webhook HTTP client")?,
        );

        // On a shared store (PostgreSQL) the replicas divide each budget among them.
        let replicas = crate::poller::replicas::Replicas::new(
            store.clone(),
            settings
                .resolved
                .iter()
                .map(|d| d.name.clone())
                .zip(budgets.iter().cloned())
                .collect(),
        );

        let tasks = TaskTracker::new();
        let loops = TaskTracker::new();
        if let Some(r) = &replicas {
            tracing::info!(replica = %r.id, "sharing each upstream's budget with the other replicas of this store");
            loops.spawn(r.clone().run(shutdown.clone()));
        }
        for poller in pollers {
            loops.spawn(poller.run(shutdown.clone(), tasks.clone()));
        }
        loops.spawn(dispatcher.run(shutdown.clone(), tasks.clone()));
        let pruner = Arc::new(Pruner::new(store.clone(), settings.store.retention));
        loops.spawn(pruner.run(shutdown.clone()));
        loops.spawn(checkpoints(
            store.clone(),
            history.clone(),
            settings.store.checkpoint_interval,
            signals.clone(),
            shutdown.clone(),
        ));

        let state = Arc::new(AppState {
            store: store.clone(),
            settings: settings.clone(),
            signals,
            kinds: upstreams
                .iter()
                .flat_map(|u| u.kinds.iter().copied())
                .collect(),
            upstreams,
            replicas: replicas.clone(),
            started: Instant::now(),
            shutdown: shutdown.clone(),
            streams: Default::default(),
            history: history.clone(),
        });
        let addr = listener.local_addr()?;
        let names: Vec<&str> = settings.resolved.iter().map(|d| d.name.as_str()).collect();
        tracing::info!(%addr, store = %redact_url(&settings.store.url), upstreams = ?names, "jobwatch is serving");
        let listener = api::stall::StallGuarded::new(listener, settings.api.write_stall_timeout);
        let server = axum::serve(listener, api::router(state))
            .with_graceful_shutdown(shutdown.clone().cancelled_owned());
        let grace = settings.api.shutdown_grace;
        // Event streams and long-polls end at shutdown, and the stall guard cuts a
        // client that stopped reading; this bounds the wait for what is left all
        // the same (a response hyper cannot finish must not hold the exit).
        let stopping = shutdown.clone();
        let served = tokio::select! {
            served = std::future::IntoFuture::into_future(server) => served,
            _ = async move {
                stopping.cancelled().await;
                tokio::time::sleep(grace).await;
            } => {
                tracing::warn!(grace_ms = grace.as_millis() as u64, "connections were still open after the grace; closing them");
                Ok(())
            }
        };
        shutdown.cancel();

        // Drain: the loops stop claiming; what was sent finishes within the grace.
        loops.close();
        // A loop is inside one store call at most; bounded all the same, so that a
        // store that hangs cannot hold the exit (nothing acknowledged depends on it).
        if tokio::time::timeout(grace, loops.wait()).await.is_err() {
            tracing::warn!("a background loop did not stop within the grace");
        }
        tasks.close();
        if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
            tracing::warn!(
                grace_ms = grace.as_millis() as u64,
                "in-flight work did not finish within the grace; it will be redone after restart"
            );
        }
        // Only now, with nothing of ours in flight, may the others take our share.
        if let Some(r) = &replicas {
            let _ = tokio::time::timeout(grace, r.leave()).await;
        }
        // Every Writer is gone with its task; the writer commits what is queued and ends.
        if tokio::time::timeout(grace, writer_done).await.is_err() {
            tracing::warn!("queued writes were not committed within the grace; they will be redone after restart");
        }
        // The ends decided since the last checkpoint, polls done: what was learned survives.
        if tokio::time::timeout(grace, save_history(&store, &history))
            .await
            .is_err()
        {
            tracing::warn!("the learned job durations were not stored within the grace");
        }
        if tokio::time::timeout(grace, store.close()).await.is_err() {
            tracing::warn!("the store did not close within the grace");
        }
        tracing::info!("jobwatch stopped");
        served.context("serving HTTP")
    }
}

/// Write the poll results a store keeps in memory every `every`, and sooner when
/// the store holds too many of them, until `shutdown` (the store's `close` writes
/// the rest). A failed checkpoint keeps the results for the next timed one (not
/// the next request: that would retry a full disk in a loop), and `/readyz` says
/// so meanwhile.
async fn checkpoints(
    store: DynStore,
    history: Arc<History>,
    every: Duration,
    signals: Arc<Signals>,
    shutdown: CancellationToken,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut failed = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
            _ = store.checkpoint_wanted(), if !failed => {}
        }
        save_history(&store, &history).await;
        let started = Instant::now();
        match store.checkpoint().await {
            Ok(n) => {
                failed = false;
                signals.checkpoint_failing.store(false, Relaxed);
                if n > 0 {
                    crate::metrics::store_write("checkpoint", started.elapsed());
                    tracing::debug!(watches = n, "wrote the poll results kept in memory");
                }
            }
            Err(e) => {
                failed = true;
                signals.checkpoint_failing.store(true, Relaxed);
                tracing::warn!(error = %e, "writing the poll results kept in memory failed; trying again at the next checkpoint");
            }
        }
    }
}

/// Store the duration summaries that changed (a few rows); a failure keeps them
/// changed for the next checkpoint. Not a readiness matter: a statistic.
async fn save_history(store: &DynStore, history: &History) {
    let changed = history.take_changed();
    if changed.is_empty() {
        return;
    }
    if let Err(e) = store.save_durations(&changed, now_ms()).await {
        history.unsaved(&changed);
        tracing::warn!(error = %e, "storing the learned job durations failed; trying again at the next checkpoint");
    }
}

/// Cancel `token` on SIGINT or SIGTERM.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        let signal = tokio::select! {
            _ = ctrl_c => "SIGINT",
            _ = term => "SIGTERM",
        };
        // Cancel first: logging can fail (a full disk under the log file).
        token.cancel();
        tracing::info!("{signal}: shutting down");
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Kind;
    use crate::store::sqlite::SqliteStore;
    use crate::store::{NewWatches, Store, WatchUpdate};
    use sqlx::Connection;

    /// The loop, not only the store, acts on the store's request: with an hour to
    /// the timed checkpoint, results past the bound reach the file at once.
    #[tokio::test]
    async fn the_checkpoint_loop_comes_early_when_the_store_asks() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("early.db").display());
        let sqlite = SqliteStore::open(&url)
            .await
            .unwrap()
            .with_unwritten_bound(10);
        let t0 = now_ms();
        let n = 11;
        sqlite
            .insert_watches(&NewWatches {
                kind: Kind::COPY,
                ids: (0..n).map(|i| format!("early-{i}")).collect(),
                webhook_url: None,
                metadata: None,
                deadline: None,
                now: t0,
                first_poll_min: 0,
                first_poll_spread: 1,
                interval_ms: 1000,
            })
            .await
            .unwrap();
        let store: DynStore = Arc::new(sqlite);
        let shutdown = CancellationToken::new();
        let looping = tokio::spawn(checkpoints(
            store.clone(),
            Arc::new(History::new(None, 50)),
            Duration::from_secs(3600),
            Signals::new(),
            shutdown.clone(),
        ));
        let claimed = store
            .claim_due_watches(t0 + 1000, n, t0 + 60_000)
            .await
            .unwrap();
        assert_eq!(claimed.len(), n as usize);
        let results: Vec<WatchUpdate> = claimed
            .into_iter()
            .map(|mut w| {
                w.poll_count = 1;
                w.last_poll_at = Some(t0 + 1000);
                w.next_poll_at = Some(t0 + 5000);
                WatchUpdate {
                    record: w,
                    event: None,
                }
            })
            .collect();
        store.apply_watch_updates(&results).await.unwrap();
        let mut file = sqlx::SqliteConnection::connect(&url).await.unwrap();
        let started = Instant::now();
        let in_file = loop {
            let in_file: i64 =
                sqlx::query_scalar("SELECT count(*) FROM watches WHERE poll_count = 1")
                    .fetch_one(&mut file)
                    .await
                    .unwrap();
            if in_file >= n as i64 || started.elapsed() > Duration::from_secs(5) {
                break in_file;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(in_file, n as i64, "written by an early checkpoint");
        shutdown.cancel();
        looping.await.unwrap();
    }
}
