//! Taking, renewing and letting go of an environment's lock: a session advisory lock held on a
//! connection of the lease's own, and the lease row.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use deploy_core::DeployError;
use deploy_core::journal::LockInfo;
use deploy_core::state::{Lease, LockOptions, Takeover};
use tokio::task::JoinHandle;
use tokio_postgres::Client;
use tokio_postgres::types::{ToSql, Type};

use super::{Inner, pg_text};

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The held session of a lease; `closed` once the lease let go, after which no new session is
/// kept.
struct Session {
    client: Option<Arc<Client>>,
    closed: bool,
}

/// What a lease and the journals opened under it share.
pub(in crate::state) struct LeaseState {
    pub(in crate::state) environment: String,
    pub(in crate::state) token: u64,
    key: i64,
    ttl: Duration,
    session: Mutex<Session>,
    /// Why the lease is lost, once known; the engine watches it ([`Lease::lost_signal`]).
    lost: tokio::sync::watch::Sender<Option<String>>,
    renewed: Mutex<Instant>,
}

impl LeaseState {
    /// The held session, while it is open.
    pub(in crate::state) fn client(&self) -> Option<Arc<Client>> {
        locked(&self.session)
            .client
            .clone()
            .filter(|c| !c.is_closed())
    }

    /// Keep `client` as the held session; `false` (and it is dropped) once the lease let go.
    fn set_client(&self, client: Arc<Client>) -> bool {
        let mut s = locked(&self.session);
        if s.closed {
            return false;
        }
        s.client = Some(client);
        true
    }

    /// Let go of the held session: no other is kept from now on.
    fn take_client(&self) -> Option<Arc<Client>> {
        let mut s = locked(&self.session);
        s.closed = true;
        s.client.take()
    }

    /// Why the lease is lost, if it is: recorded, or found now — no renewal for a whole ttl
    /// means another holder may have taken the lock over.
    pub(in crate::state) fn lost(&self) -> Option<String> {
        if let Some(why) = self.lost.borrow().clone() {
            return Some(why);
        }
        if !locked(&self.session).closed {
            let since = locked(&self.renewed).elapsed();
            if since >= self.ttl {
                self.set_lost(format!(
                    "its lease expired unrenewed (last renewed {} ms ago, the lease lasts {} ms): \
                     another holder may take the lock over",
                    since.as_millis(),
                    self.ttl.as_millis()
                ));
            }
        }
        self.lost.borrow().clone()
    }

    /// Record why the lease is lost (the first reason stays), and tell whoever watches.
    pub(in crate::state) fn set_lost(&self, why: String) {
        self.lost.send_if_modified(|lost| {
            if lost.is_some() {
                return false;
            }
            tracing::error!(target: "deploy", "the lease on environment {} (token {}) is lost: {why}", self.environment, self.token);
            *lost = Some(why);
            true
        });
    }
}

/// A held lock of a `PgStateStore`.
///
/// Dropped without [`Lease::release`] or [`Lease::abandon`] (a panic), its session closes and
/// the lock is stale, as when the process dies.
pub(in crate::state) struct PgLease {
    inner: Arc<Inner>,
    state: Arc<LeaseState>,
    heartbeat: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for PgLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgLease")
            .field("store", &self.inner.location)
            .field("environment", &self.state.environment)
            .field("token", &self.state.token)
            .finish()
    }
}

impl PgLease {
    fn start(
        inner: &Arc<Inner>,
        environment: &str,
        key: i64,
        token: u64,
        client: Client,
        connection: JoinHandle<()>,
        sent: Instant,
    ) -> Self {
        let state = Arc::new(LeaseState {
            environment: environment.to_owned(),
            token,
            key,
            ttl: inner.ttl,
            session: Mutex::new(Session {
                client: Some(Arc::new(client)),
                closed: false,
            }),
            lost: tokio::sync::watch::Sender::new(None),
            renewed: Mutex::new(sent),
        });
        {
            let mut leases = locked(&inner.leases);
            leases.retain(|_, l| l.strong_count() > 0);
            leases.insert(token, Arc::downgrade(&state));
        }
        let heartbeat = tokio::spawn(heartbeat(inner.clone(), state.clone(), Some(connection)));
        Self {
            inner: inner.clone(),
            state,
            heartbeat: Some(heartbeat),
        }
    }

    /// Stop the heartbeat and wait until it has.
    async fn stop_heartbeat(&mut self) {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
            let _ = h.await;
        }
    }

    fn forget(&self) {
        locked(&self.inner.leases).remove(&self.state.token);
    }
}

#[async_trait]
impl Lease for PgLease {
    fn token(&self) -> u64 {
        self.state.token
    }

    fn lost(&self) -> Option<String> {
        self.state.lost()
    }

    /// Turns `Some` as soon as the heartbeat finds another holder's token, finds it could not
    /// renew for a whole ttl, or an append is refused.
    fn lost_signal(&self) -> Option<tokio::sync::watch::Receiver<Option<String>>> {
        Some(self.state.lost.subscribe())
    }

    async fn release(mut self: Box<Self>) {
        self.stop_heartbeat().await;
        let held = self.state.take_client().filter(|c| !c.is_closed());
        let (env, token) = (&self.state.environment, self.state.token as i64);
        let params: [(&(dyn ToSql + Sync), Type); 2] = [(env, Type::TEXT), (&token, Type::INT8)];
        let deleted = match &held {
            Some(c) => c
                .execute_typed(&self.inner.sql.delete_lock, &params)
                .await
                .ok(),
            None => None,
        };
        if deleted.is_none() {
            // The session is gone: delete the row over the shared connection (the row is ours
            // only while it names our token).
            let shared = self.inner.shared().await;
            let result = match shared {
                Ok(c) => c
                    .execute_typed(&self.inner.sql.delete_lock, &params)
                    .await
                    .map_err(|e| self.inner.pg_err("release the lock", e)),
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                tracing::warn!(target: "deploy", "{e}; the lock stays, stale, until taken over");
            }
        }
        if let Some(c) = held {
            let _ = c
                .execute_typed(
                    "SELECT pg_advisory_unlock($1)",
                    &[(&self.state.key, Type::INT8)],
                )
                .await;
        }
        self.forget();
    }

    async fn abandon(mut self: Box<Self>) {
        self.stop_heartbeat().await;
        if let Some(c) = self.state.take_client().filter(|c| !c.is_closed()) {
            // Unlocked before the session closes, so that the lock is stale at once.
            let _ = c
                .execute_typed(
                    "SELECT pg_advisory_unlock($1)",
                    &[(&self.state.key, Type::INT8)],
                )
                .await;
        }
        self.forget();
    }
}

impl Drop for PgLease {
    fn drop(&mut self) {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
        drop(self.state.take_client());
        self.forget();
    }
}

/// Take the lock of `environment`; see [`PgStateStore`](super::PgStateStore).
pub(in crate::state) async fn acquire(
    inner: &Arc<Inner>,
    environment: &str,
    holder: &LockInfo,
    options: LockOptions,
) -> Result<PgLease, DeployError> {
    let key = inner.lock_key(environment);
    let info = inner.json("the holder", holder)?;
    let ttl = inner.ttl.as_secs_f64();
    let (client, connection) = inner
        .connector
        .connect("deploy-lease")
        .await
        .map_err(|e| inner.pg_err("connect", e))?;
    let deadline = options.wait.map(|w| tokio::time::Instant::now() + w);
    let stale = |info: Option<LockInfo>| DeployError::StaleLock {
        environment: environment.to_owned(),
        location: inner.location.clone(),
        holder: info.map(Box::new),
    };
    loop {
        let got: bool = client
            .query_typed(&inner.sql.try_lock, &[(&key, Type::INT8)])
            .await
            .map_err(|e| inner.pg_err("take the advisory lock", e))?
            .first()
            .is_some_and(|r| r.get(0));
        if got {
            // Nobody's session holds the lock: a row left is a gone holder's.
            let previous = inner
                .read_row(&client, environment)
                .await
                .map_err(|e| inner.pg_err("read the lock", e))?;
            if let Some(previous) = &previous
                && options.takeover == Takeover::Never
            {
                // Let go at once, not when the session closes: the caller may take it over
                // next.
                let _ = client
                    .query_typed("SELECT pg_advisory_unlock($1)", &[(&key, Type::INT8)])
                    .await;
                return Err(stale(previous.info.clone()));
            }
            let sent = Instant::now();
            let token: i64 = client
                .query_typed(
                    &inner.sql.upsert_lock,
                    &[
                        (&environment as &(dyn ToSql + Sync), Type::TEXT),
                        (&info, Type::JSONB),
                        (&ttl, Type::FLOAT8),
                    ],
                )
                .await
                .map_err(|e| inner.pg_err("write the lock", e))?
                .first()
                .map(|r| r.get(0))
                .ok_or_else(|| inner.err("write the lock: no token returned", None))?;
            if let Some(previous) = previous {
                tracing::warn!(target: "deploy", "took over the stale lock of environment {environment} at {}: {}", inner.location,
                    previous.info.map_or("an unreadable holder".to_owned(), |i| i.to_string()));
            }
            return Ok(PgLease::start(
                inner,
                environment,
                key,
                token as u64,
                client,
                connection,
                sent,
            ));
        }
        let row = inner
            .read_row(&client, environment)
            .await
            .map_err(|e| inner.pg_err("read the lock", e))?;
        if let Some(r) = &row
            && r.held
            && r.expired
        {
            // Its session is alive but it stopped renewing: stopped, or cut off.
            if options.takeover == Takeover::Never {
                return Err(stale(r.info.clone()));
            }
            end_session(inner, &client, environment, r.lock_pid).await?;
            continue;
        }
        let now = tokio::time::Instant::now();
        match deadline {
            Some(d) if now < d => {
                tokio::time::sleep(inner.poll.min(d - now)).await;
            }
            _ => {
                return Err(DeployError::Locked {
                    environment: environment.to_owned(),
                    location: inner.location.clone(),
                    holder: row.and_then(|r| r.info).map(Box::new),
                });
            }
        }
    }
}

/// End the session `pid` of an expired holder that still holds the advisory lock, and wait
/// (up to 10 s) until its lock is free.
async fn end_session(
    inner: &Inner,
    client: &Client,
    environment: &str,
    pid: Option<i32>,
) -> Result<(), DeployError> {
    let Some(pid) = pid else {
        return Ok(());
    };
    client
        .query_typed("SELECT pg_terminate_backend($1)", &[(&pid, Type::INT4)])
        .await
        .map_err(|e| {
            inner.err(
                format!(
                    "end the session (pid {pid}) of the expired holder of environment \
                     {environment}: {} (this needs the holder's role, membership in \
                     pg_signal_backend, or a superuser)",
                    pg_text(&e)
                ),
                Some(e),
            )
        })?;
    tracing::warn!(target: "deploy", "ended the session (pid {pid}) of the expired holder of environment {environment} at {}", inner.location);
    for _ in 0..200 {
        let row = inner
            .read_row(client, environment)
            .await
            .map_err(|e| inner.pg_err("read the lock", e))?;
        if row.is_none_or(|r| r.lock_pid != Some(pid)) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(inner.err(
        format!(
            "the session (pid {pid}) of the expired holder of environment {environment} did not \
             end within 10 s"
        ),
        None,
    ))
}

/// What one renewal found.
enum Renewal {
    /// Renewed; a new connection's task when the session had to be opened again.
    Renewed(Option<JoinHandle<()>>),
    /// Another holder has the lock.
    Lost(String),
    /// Not renewed this time.
    Failed(String),
}

/// Renew the lease every ttl/3 until it is lost or let go; when the session ends (the server
/// or the network closed it, or a taker ended it), check at once.
async fn heartbeat(
    inner: Arc<Inner>,
    state: Arc<LeaseState>,
    mut connection: Option<JoinHandle<()>>,
) {
    let every = inner.ttl / 3;
    loop {
        let ended = async {
            match connection.as_mut() {
                Some(task) => {
                    let _ = task.await;
                }
                None => std::future::pending().await,
            }
        };
        let session_ended = tokio::select! {
            () = tokio::time::sleep(every) => false,
            () = ended => true,
        };
        if session_ended {
            connection = None;
        }
        if inner
            .heartbeats_paused
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            continue;
        }
        match renew(&inner, &state).await {
            Renewal::Renewed(task) => {
                if task.is_some() {
                    connection = task;
                }
            }
            Renewal::Lost(why) => {
                state.set_lost(why);
                return;
            }
            Renewal::Failed(why) => {
                if state.lost().is_some() {
                    return;
                }
                tracing::warn!(target: "deploy", "renew the lease on environment {} at {}: {why}; trying again", state.environment, inner.location);
            }
        }
    }
}

async fn renew(inner: &Inner, state: &LeaseState) -> Renewal {
    let mut task = None;
    let client = match state.client() {
        Some(c) => c,
        None => {
            // The session is gone, and our advisory lock with it: open one again and take it
            // again, unless another holder has the lock now.
            let (c, t) = match inner.connector.connect("deploy-lease").await {
                Ok(x) => x,
                Err(e) => return Renewal::Failed(format!("reconnect: {}", pg_text(&e))),
            };
            let got = c
                .query_typed(&inner.sql.try_lock, &[(&state.key, Type::INT8)])
                .await
                .map(|rows| rows.first().is_some_and(|r| r.get::<_, bool>(0)));
            match got {
                Ok(true) => {}
                Ok(false) => {
                    return match inner.why_fenced(&state.environment, state.token).await {
                        Some(why) => Renewal::Lost(why),
                        None => {
                            Renewal::Failed("another session holds the advisory lock".to_owned())
                        }
                    };
                }
                Err(e) => {
                    return Renewal::Failed(format!("take the advisory lock: {}", pg_text(&e)));
                }
            }
            let c = Arc::new(c);
            if !state.set_client(c.clone()) {
                return Renewal::Failed("the lease was let go".to_owned());
            }
            task = Some(t);
            c
        }
    };
    let token = state.token as i64;
    let ttl = inner.ttl.as_secs_f64();
    // Before the statement: the server's now() is later, so the lease is never thought alive
    // here after it expired there.
    let sent = Instant::now();
    let renewed = tokio::time::timeout(
        inner.ttl / 3,
        client.execute_typed(
            &inner.sql.renew,
            &[
                (&state.environment as &(dyn ToSql + Sync), Type::TEXT),
                (&token, Type::INT8),
                (&ttl, Type::FLOAT8),
            ],
        ),
    )
    .await;
    let Ok(renewed) = renewed else {
        return Renewal::Failed(format!(
            "no answer within {} ms",
            (inner.ttl / 3).as_millis()
        ));
    };
    match renewed {
        Ok(1) => {
            *locked(&state.renewed) = sent;
            Renewal::Renewed(task)
        }
        Ok(_) => Renewal::Lost(
            inner
                .why_fenced(&state.environment, state.token)
                .await
                .unwrap_or_else(|| "the lock was taken over".to_owned()),
        ),
        Err(e) => Renewal::Failed(pg_text(&e)),
    }
}
