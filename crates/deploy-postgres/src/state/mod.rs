//! [`PgStateStore`]: the team's PostgreSQL as the shared state store.

mod config;
pub use config::{DEFAULT_STATE_URL_ENV, PgStateStoreConfig, STATE_KIND};
mod conn;
mod journal;
mod lease;
mod schema;

#[cfg(all(test, feature = "testing"))]
mod fence_against_postgres;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use deploy_core::journal::{AddressedRequest, JournalState, LockInfo, Record};
use deploy_core::state::{HistoryEntry, Holder, JournalWriter, Lease, LockOptions, StateStore};
use deploy_core::{DeployError, Error, ErrorKind, Report};
use tokio_postgres::Client;
use tokio_postgres::types::{ToSql, Type};

use crate::connection::PgConfig;
use conn::Connector;
use lease::LeaseState;

/// The default schema.
pub const DEFAULT_SCHEMA: &str = "deploy";

/// How to build a [`PgStateStore`].
#[derive(Debug, Clone)]
pub struct PgStateStoreBuilder {
    config: PgConfig,
    schema: String,
    lease_ttl: Duration,
    poll_interval: Duration,
    root_cert: Option<PathBuf>,
}

impl PgStateStoreBuilder {
    /// The schema of the store's tables (default `deploy`): a lower-case identifier.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// How long a lease lasts unless renewed (default 30 s; at least 300 ms). The heartbeat
    /// renews it every third of that; a holder stopped or cut off for longer is stale.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// How often a caller waiting for the lock tries again (default 250 ms).
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll_interval = every;
        self
    }

    /// The root certificates (PEM) that `sslmode=verify-ca` and `verify-full` check the server
    /// against, instead of Mozilla's.
    pub fn root_cert(mut self, pem_file: impl Into<PathBuf>) -> Self {
        self.root_cert = Some(pem_file.into());
        self
    }

    /// The store; `Err` (never with the password) when a setting is unusable. Connects to
    /// nothing yet.
    pub fn build(self) -> deploy_core::Result<PgStateStore> {
        let location = format!("{} (schema {})", self.config, self.schema);
        let invalid = |cause: String| {
            Error::new(
                ErrorKind::InvalidInput,
                "configure",
                format!("state store {location}"),
                cause,
            )
        };
        let mut problems = self.config.problems();
        if let Err(e) = schema::check_name(&self.schema) {
            problems.push(e);
        }
        if self.lease_ttl < Duration::from_millis(300) {
            problems.push(format!(
                "the lease ttl {:?} is shorter than 300 ms",
                self.lease_ttl
            ));
        }
        if self.poll_interval.is_zero() {
            problems.push("the poll interval is zero".to_owned());
        }
        if !problems.is_empty() {
            return Err(invalid(problems.join("; ")));
        }
        let connector = Connector::new(self.config, self.root_cert.as_deref()).map_err(invalid)?;
        let sql = Sql::new(&self.schema);
        Ok(PgStateStore {
            inner: Arc::new(Inner {
                connector,
                lock_prefix: format!("deploy-state\0{}\0", self.schema),
                schema: self.schema,
                ttl: self.lease_ttl,
                poll: self.poll_interval,
                location,
                sql,
                shared: tokio::sync::Mutex::new(None),
                ready: tokio::sync::OnceCell::new(),
                leases: std::sync::Mutex::new(HashMap::new()),
                heartbeats_paused: AtomicBool::new(false),
            }),
        })
    }
}

/// The team's PostgreSQL as the [`StateStore`] every machine that deploys an environment
/// shares — one lock, one journal per run, one history, across laptops and CI runners.
///
/// ```no_run
/// use std::sync::Arc;
/// use std::time::Duration;
/// use deploy_postgres::{PgConfig, PgStateStore};
///
/// # fn demo(env: deploy_core::Environment) -> deploy_core::Result<()> {
/// let config = PgConfig::from_env()?; // PGHOST, PGUSER, PGPASSWORD, PGSSLMODE=verify-full...
/// let store = PgStateStore::builder(config)
///     .schema("deploy")                    // the default
///     .lease_ttl(Duration::from_secs(30))  // the default; renewed every 10 s
///     .build()?;
/// let engine = deploy_core::Engine::new(env)
///     .with_state_store(Arc::new(store))
///     .with_lock_wait(Duration::from_secs(600)); // queue behind another deploy
/// # Ok(()) }
/// ```
///
/// # Tables
///
/// In a schema of its own (`deploy` by default), created and upgraded by the store on first use
/// (`schema_migrations` holds the version; the upgrade runs in one transaction under a
/// transaction-level advisory lock, so two processes starting at once are safe):
///
/// | table | what |
/// | --- | --- |
/// | `locks` | one row per held environment: its fencing `token`, the `holder` (JSON: user, host, pid, run, CI job, since when), the holding session's `backend_pid`, `acquired_at`, `expires_at` |
/// | `token_seq` | the sequence fencing tokens come from (monotonic across environments) |
/// | `runs` | one row per journaled run, in the order they started |
/// | `journal` | one row per record (`jsonb`), `seq` ordering them, each with the token it was written under |
/// | `requests` | the control request left for an environment's run |
/// | `reports`, `history` | finished runs |
///
/// # The lock
///
/// A lease is two things, both needed for the lock to be live:
///
/// - a **session advisory lock** keyed on (schema, environment), held by a connection of its own
///   for the run's whole life: if the process dies, its connection closes and PostgreSQL frees
///   the lock at once;
/// - the **lease row** in `locks`, with a token from `token_seq` and `expires_at = now() + ttl`
///   on the *database's* clock (machines' clocks never matter), renewed by a heartbeat every
///   ttl/3 with `UPDATE … WHERE token = $mine`.
///
/// The lock is **stale** when the row's session no longer holds the advisory lock (the holder
/// died, or [abandoned](Lease::abandon) it), or `expires_at` has passed (the holder is stopped —
/// `SIGSTOP`, a suspended laptop — or cut off). A stale lock is taken over only with
/// [`Takeover::IfStale`](deploy_core::state::Takeover::IfStale); when the expired holder's
/// session still holds the advisory lock, the taker ends it with `pg_terminate_backend` first
/// (which needs the same role, membership in `pg_signal_backend`, or a superuser). A live holder is never displaced: the caller gets
/// [`DeployError::Locked`] naming it, after queueing for [`LockOptions::wait`]. Waiting polls
/// `pg_try_advisory_lock` every [`PgStateStoreBuilder::poll_interval`]; it never blocks in
/// `pg_advisory_lock`, whose waiting transaction would hold up a `CREATE INDEX CONCURRENTLY` of
/// a migration in the same database.
///
/// # Fencing
///
/// Every journal write is one statement, `INSERT … SELECT … WHERE EXISTS (SELECT 1 FROM locks
/// WHERE environment = $1 AND token = $mine FOR SHARE)`: once another holder took the lock over
/// it inserts nothing, and the append is [`DeployError::LeaseLost`]. `FOR SHARE` orders it with
/// the takeover's update of the row, so no record of the old holder lands after the new one
/// took over. [`Lease::lost`] says why as soon as the store knows — the heartbeat found another
/// token, or could not renew for a whole ttl (from then on someone may have taken over), or an
/// append was refused — and [`Lease::lost_signal`] tells the engine at that moment, which stops
/// the run where it is, even in the middle of a wait.
///
/// # Connections
///
/// Each lease has its own connection (it must: the advisory lock lives in its session). The
/// heartbeat and the run's journal appends go over it: appends then never queue behind the
/// store's other traffic (the engine polls for control requests), and a takeover that ends the
/// session makes the next append fail at once. When that connection is gone, an append goes
/// over the store's shared connection, still fenced. Everything else — holders, journals read,
/// requests, reports, history — uses one shared connection per store value, opened on first
/// use and again after it breaks.
///
/// # TLS
///
/// `sslmode` as libpq reads it, through rustls (ring, the provider already in this workspace
/// through reqwest): `disable`; `allow` and `prefer` (the default) use TLS when the server
/// offers it; `require` insists on it; neither checks the certificate, as libpq does without a
/// root certificate — SCRAM's channel binding still ties the password exchange to the channel
/// when the server offers it. `verify-ca` checks the chain and `verify-full` the chain and the
/// host name, against [`PgStateStoreBuilder::root_cert`] (a PEM file: a private CA, your cloud
/// provider's) or else Mozilla's roots (`webpki-roots`). A Unix socket never uses TLS.
///
/// The password is set through `tokio_postgres::Config::password`, never written into a
/// connection string, and read from the pgpass file (`passfile`, else `~/.pgpass`) when the
/// settings have none. [`location`](StateStore::location), `Debug` and every error leave it out.
///
/// Cloning shares the connection and the leases (like an `Arc`); two values built apart are
/// two independent clients, as two machines are.
#[derive(Clone)]
pub struct PgStateStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PgStateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStateStore")
            .field("location", &self.inner.location)
            .field("lease_ttl", &self.inner.ttl)
            .field("poll_interval", &self.inner.poll)
            .field("connector", &self.inner.connector)
            .finish()
    }
}

pub(super) struct Inner {
    connector: Connector,
    schema: String,
    /// Prefix of the advisory-lock keys: the schema, so two stores in one database never
    /// share a lock.
    lock_prefix: String,
    ttl: Duration,
    poll: Duration,
    location: String,
    sql: Sql,
    shared: tokio::sync::Mutex<Option<Arc<Client>>>,
    ready: tokio::sync::OnceCell<()>,
    /// This value's live leases by token: a journal opened under one appends over its
    /// connection and shares its lost state.
    leases: std::sync::Mutex<HashMap<u64, Weak<LeaseState>>>,
    heartbeats_paused: AtomicBool,
}

/// The statements, with the schema in them.
pub(super) struct Sql {
    try_lock: String,
    holder: String,
    upsert_lock: String,
    renew: String,
    delete_lock: String,
    token_holds: String,
    create_run: String,
    run_exists: String,
    append: String,
    runs: String,
    journal: String,
    put_request: String,
    take_request: String,
    save_report: String,
    report: String,
    record_history: String,
    history: String,
}

impl Sql {
    fn new(schema: &str) -> Self {
        let s = crate::tools::ident(schema);
        // The lease row still names the holder's token: the fence of every write.
        let fence = format!(
            "EXISTS (SELECT 1 FROM {s}.locks WHERE environment = $1 AND token = $3 FOR SHARE)"
        );
        Self {
            try_lock: "SELECT pg_try_advisory_lock($1)".to_owned(),
            // The row, whether its session still holds the advisory lock, and who does.
            holder: format!(
                "WITH k AS (
                     SELECT pid FROM pg_locks
                     WHERE locktype = 'advisory' AND granted AND objsubid = 1
                       AND classid = $2 AND objid = $3
                       AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                 )
                 SELECT l.holder, l.token, l.expires_at, l.expires_at < now(),
                        EXISTS (SELECT 1 FROM k WHERE k.pid = l.backend_pid),
                        (SELECT pid FROM k LIMIT 1)
                 FROM {s}.locks l WHERE l.environment = $1"
            ),
            upsert_lock: format!(
                "INSERT INTO {s}.locks AS l (environment, token, holder, backend_pid, acquired_at, expires_at)
                 VALUES ($1, nextval('{s}.token_seq'), $2, pg_backend_pid(), now(), now() + make_interval(secs => $3))
                 ON CONFLICT (environment) DO UPDATE SET
                     token = EXCLUDED.token, holder = EXCLUDED.holder, backend_pid = EXCLUDED.backend_pid,
                     acquired_at = EXCLUDED.acquired_at, expires_at = EXCLUDED.expires_at
                 RETURNING token"
            ),
            renew: format!(
                "UPDATE {s}.locks SET expires_at = now() + make_interval(secs => $3),
                     backend_pid = pg_backend_pid()
                 WHERE environment = $1 AND token = $2"
            ),
            delete_lock: format!("DELETE FROM {s}.locks WHERE environment = $1 AND token = $2"),
            token_holds: format!(
                "SELECT token, holder FROM {s}.locks WHERE environment = $1"
            ),
            create_run: format!(
                "INSERT INTO {s}.runs (environment, run_id, token)
                 SELECT $1, $2, $3 WHERE {fence}
                 ON CONFLICT (environment, run_id) DO NOTHING"
            ),
            run_exists: format!(
                "SELECT 1 FROM {s}.runs WHERE environment = $1 AND run_id = $2"
            ),
            append: format!(
                "INSERT INTO {s}.journal (environment, run_id, token, record)
                 SELECT $1, $2, $3, $4 WHERE {fence}"
            ),
            runs: format!("SELECT run_id FROM {s}.runs WHERE environment = $1 ORDER BY seq"),
            journal: format!(
                "SELECT j.record FROM {s}.runs r
                 LEFT JOIN {s}.journal j ON j.environment = r.environment AND j.run_id = r.run_id
                 WHERE r.environment = $1 AND r.run_id = $2
                 ORDER BY j.seq"
            ),
            put_request: format!(
                "INSERT INTO {s}.requests (environment, request) VALUES ($1, $2)
                 ON CONFLICT (environment) DO UPDATE SET request = EXCLUDED.request, written_at = now()"
            ),
            take_request: format!(
                "DELETE FROM {s}.requests WHERE environment = $1 RETURNING request"
            ),
            save_report: format!(
                "INSERT INTO {s}.reports (environment, run_id, report) VALUES ($1, $2, $3)
                 ON CONFLICT (environment, run_id) DO UPDATE SET report = EXCLUDED.report, saved_at = now()"
            ),
            report: format!(
                "SELECT report FROM {s}.reports WHERE environment = $1 AND run_id = $2"
            ),
            record_history: format!(
                "INSERT INTO {s}.history (environment, run_id, entry) VALUES ($1, $2, $3)"
            ),
            history: format!("SELECT entry FROM {s}.history WHERE environment = $1 ORDER BY seq"),
        }
    }
}

/// A tokio-postgres error in words, with its causes (the server's message): tokio-postgres's
/// own `Display` says only "db error".
pub(super) fn pg_text(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{}: {}", db.severity(), db.message());
        if let Some(d) = db.detail() {
            s.push_str(&format!(" ({d})"));
        }
        return s;
    }
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(x) = src {
        s.push_str(&format!(": {x}"));
        src = x.source();
    }
    s
}

/// The holder row as read with [`Sql::holder`].
#[derive(Debug)]
pub(super) struct Row {
    info: Option<LockInfo>,
    expires_at: SystemTime,
    expired: bool,
    /// The row's session still holds the advisory lock.
    held: bool,
    /// Who holds the advisory lock, if anyone.
    lock_pid: Option<i32>,
}

impl Row {
    fn stale(&self) -> bool {
        !self.held || self.expired
    }
}

impl Inner {
    /// `DeployError::Store` for `cause`, the password (if the text ever held it) cut out.
    pub(super) fn err(
        &self,
        cause: impl Into<String>,
        source: Option<tokio_postgres::Error>,
    ) -> DeployError {
        let mut cause = cause.into();
        if let Some(pw) = self.connector.config().password().filter(|p| !p.is_empty()) {
            cause = cause.replace(pw, "<redacted>");
        }
        DeployError::Store {
            location: self.location.clone(),
            cause,
            source: source.map(|e| Box::new(e) as deploy_core::BoxError),
        }
    }

    /// `DeployError::Store` for a failed statement: `what` failed, with the server's words.
    pub(super) fn pg_err(&self, what: &str, e: tokio_postgres::Error) -> DeployError {
        self.err(format!("{what}: {}", pg_text(&e)), Some(e))
    }

    /// The rows `sql` returns with `params`, over the shared connection; an error says `what`
    /// failed.
    async fn query(
        &self,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
        what: &str,
    ) -> Result<Vec<tokio_postgres::Row>, DeployError> {
        let client = self.shared().await?;
        client
            .query_typed(sql, params)
            .await
            .map_err(|e| self.pg_err(what, e))
    }

    /// How many rows `sql` with `params` changed, over the shared connection; an error says
    /// `what` failed.
    async fn execute(
        &self,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
        what: &str,
    ) -> Result<u64, DeployError> {
        let client = self.shared().await?;
        client
            .execute_typed(sql, params)
            .await
            .map_err(|e| self.pg_err(what, e))
    }

    /// The JSON in the first column of the first of `rows`, read as `T`; `None` without rows.
    fn first_json<T: serde::de::DeserializeOwned>(
        &self,
        rows: &[tokio_postgres::Row],
        what: &str,
    ) -> Result<Option<T>, DeployError> {
        match rows.first() {
            None => Ok(None),
            Some(r) => serde_json::from_value(r.get::<_, serde_json::Value>(0))
                .map(Some)
                .map_err(|e| self.err(format!("{what} is malformed: {e}"), None)),
        }
    }

    /// The advisory-lock key of `environment` in this schema.
    pub(super) fn lock_key(&self, environment: &str) -> i64 {
        use sha2::{Digest, Sha256};
        let d = Sha256::digest(format!("{}{environment}", self.lock_prefix).as_bytes());
        let mut b = [0u8; 8];
        b.copy_from_slice(&d[..8]);
        i64::from_be_bytes(b)
    }

    /// The tables exist, at this release's version (once per store value).
    async fn ready(&self) -> Result<(), DeployError> {
        self.ready
            .get_or_try_init(|| async {
                let (mut client, _task) = self
                    .connector
                    .connect("deploy-state-setup")
                    .await
                    .map_err(|e| self.pg_err("connect", e))?;
                let key = self.lock_key("\0schema");
                let found = schema::upgrade(&mut client, &self.schema, key)
                    .await
                    .map_err(|cause| self.err(cause, None))?;
                if found < schema::VERSION {
                    tracing::info!(target: "deploy", "state store {}: tables upgraded from version {found} to {}", self.location, schema::VERSION);
                }
                Ok(())
            })
            .await
            .map(|_| ())
    }

    /// The shared connection, opened on first use and again once it broke.
    pub(super) async fn shared(&self) -> Result<Arc<Client>, DeployError> {
        self.ready().await?;
        let mut slot = self.shared.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let (client, _task) = self
            .connector
            .connect("deploy-state")
            .await
            .map_err(|e| self.pg_err("connect", e))?;
        let client = Arc::new(client);
        *slot = Some(client.clone());
        Ok(client)
    }

    /// The lease row of `environment` over `client`, with whether its session still holds the
    /// advisory lock.
    pub(super) async fn read_row(
        &self,
        client: &Client,
        environment: &str,
    ) -> Result<Option<Row>, tokio_postgres::Error> {
        let key = self.lock_key(environment) as u64;
        let (hi, lo) = ((key >> 32) as u32, key as u32);
        let row = client
            .query_typed(
                &self.sql.holder,
                &[
                    (&environment as &(dyn ToSql + Sync), Type::TEXT),
                    (&hi, Type::OID),
                    (&lo, Type::OID),
                ],
            )
            .await?;
        Ok(row.first().map(|r| Row {
            info: serde_json::from_value(r.get::<_, serde_json::Value>(0)).ok(),
            expires_at: r.get(2),
            expired: r.get(3),
            held: r.get(4),
            lock_pid: r.get(5),
        }))
    }

    /// The token that holds `environment`'s lock now and its holder, over the shared
    /// connection: what a fenced write compares with.
    pub(super) async fn current_token(
        &self,
        environment: &str,
    ) -> Result<Option<(u64, Option<LockInfo>)>, DeployError> {
        let client = self.shared().await?;
        let rows = client
            .query_typed(&self.sql.token_holds, &[(&environment, Type::TEXT)])
            .await
            .map_err(|e| self.pg_err("read the lock", e))?;
        Ok(rows.first().map(|r| {
            (
                r.get::<_, i64>(0) as u64,
                serde_json::from_value(r.get::<_, serde_json::Value>(1)).ok(),
            )
        }))
    }

    /// Why a write under `token` is refused: the lock is someone else's now, or nobody's.
    pub(super) async fn why_fenced(&self, environment: &str, token: u64) -> Option<String> {
        match self.current_token(environment).await {
            Ok(Some((t, _))) if t == token => None,
            Ok(Some((_, Some(info)))) => Some(format!("the lock was taken over by {info}")),
            Ok(Some((_, None))) => Some("the lock was taken over by another holder".to_owned()),
            // Not by this lease, which stops writing and renewing before it releases.
            Ok(None) => Some(
                "the lock was taken over by another holder, which has released it since".to_owned(),
            ),
            // Unknown: not called lost.
            Err(_) => None,
        }
    }

    fn lease(&self, token: u64, environment: &str) -> Option<Arc<LeaseState>> {
        let leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        leases
            .get(&token)
            .and_then(Weak::upgrade)
            .filter(|l| l.environment == environment)
    }

    fn json<T: serde::Serialize>(
        &self,
        what: &str,
        value: &T,
    ) -> Result<serde_json::Value, DeployError> {
        serde_json::to_value(value).map_err(|e| self.err(format!("serialise {what}: {e}"), None))
    }
}

impl PgStateStore {
    /// The journal of `run_id` written under the lease with `token`.
    fn open_journal(&self, token: u64, environment: &str, run_id: &str) -> Box<dyn JournalWriter> {
        Box::new(journal::PgJournal::new(
            self.inner.clone(),
            self.inner.lease(token, environment),
            environment,
            run_id,
            token,
            self.journal_location(environment, run_id),
        ))
    }

    /// A builder for the store in the database `config` names.
    pub fn builder(config: PgConfig) -> PgStateStoreBuilder {
        PgStateStoreBuilder {
            config,
            schema: DEFAULT_SCHEMA.to_owned(),
            lease_ttl: Duration::from_secs(30),
            poll_interval: Duration::from_millis(250),
            root_cert: None,
        }
    }

    /// The store with the default settings (schema `deploy`, a 30 s lease).
    pub fn new(config: PgConfig) -> deploy_core::Result<Self> {
        Self::builder(config).build()
    }

    /// The schema of its tables.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// How long a lease lasts unless renewed.
    pub fn lease_ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// Create or upgrade the tables now, instead of on first use; `Err` when the database
    /// cannot be reached or written.
    pub async fn prepare(&self) -> Result<(), DeployError> {
        self.inner.ready().await
    }

    /// Tests only: stop (`true`) or restart every heartbeat of this store value's leases, as a
    /// stopped process (`SIGSTOP`) would.
    #[doc(hidden)]
    pub fn pause_heartbeats(&self, paused: bool) {
        self.inner.heartbeats_paused.store(paused, Ordering::SeqCst);
    }
}

#[async_trait]
impl StateStore for PgStateStore {
    fn location(&self) -> String {
        self.inner.location.clone()
    }

    async fn lock(
        &self,
        environment: &str,
        holder: &LockInfo,
        options: LockOptions,
    ) -> Result<Box<dyn Lease>, DeployError> {
        self.inner.ready().await?;
        lease::acquire(&self.inner, environment, holder, options)
            .await
            .map(|l| Box::new(l) as Box<dyn Lease>)
    }

    async fn holder(&self, environment: &str) -> Result<Option<Holder>, DeployError> {
        let client = self.inner.shared().await?;
        let row = self
            .inner
            .read_row(&client, environment)
            .await
            .map_err(|e| self.inner.pg_err("read the lock", e))?;
        Ok(row.map(|r| {
            let stale = r.stale();
            // A holder this release cannot read (a newer one wrote it) still holds the lock.
            let info = r.info.clone().unwrap_or_else(|| {
                serde_json::from_value(serde_json::json!({
                    "owner": "unknown", "pid": 0, "host": "unknown",
                    "started_at": "1970-01-01T00:00:00Z", "run_id": "an unreadable holder",
                }))
                .expect("a LockInfo")
            });
            Holder::new(info, stale, Some(r.expires_at))
        }))
    }

    async fn create_journal(
        &self,
        lease: &dyn Lease,
        environment: &str,
        run_id: &str,
    ) -> Result<Box<dyn JournalWriter>, DeployError> {
        let token = lease.token();
        let n = self
            .inner
            .execute(
                &self.inner.sql.create_run,
                &[
                    (&environment, Type::TEXT),
                    (&run_id, Type::TEXT),
                    (&(token as i64), Type::INT8),
                ],
                &format!("create the journal of run {run_id}"),
            )
            .await?;
        if n == 0 {
            if let Some(cause) = self.inner.why_fenced(environment, token).await {
                return Err(DeployError::LeaseLost {
                    environment: environment.to_owned(),
                    run_id: run_id.to_owned(),
                    cause,
                });
            }
            return Err(self.inner.err(
                format!("create the journal of run {run_id}: it exists already"),
                None,
            ));
        }
        Ok(self.open_journal(token, environment, run_id))
    }

    async fn reopen_journal(
        &self,
        lease: &dyn Lease,
        environment: &str,
        run_id: &str,
    ) -> Result<Box<dyn JournalWriter>, DeployError> {
        let found = self
            .inner
            .query(
                &self.inner.sql.run_exists,
                &[(&environment, Type::TEXT), (&run_id, Type::TEXT)],
                &format!("open the journal of run {run_id}"),
            )
            .await?;
        if found.is_empty() {
            return Err(self.inner.err(
                format!("open the journal of run {run_id}: there is no such run in environment {environment}"),
                None,
            ));
        }
        let token = lease.token();
        Ok(self.open_journal(token, environment, run_id))
    }

    async fn runs(&self, environment: &str) -> Result<Vec<String>, DeployError> {
        let rows = self
            .inner
            .query(
                &self.inner.sql.runs,
                &[(&environment, Type::TEXT)],
                "list the runs",
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn journal(
        &self,
        environment: &str,
        run_id: &str,
    ) -> Result<Option<JournalState>, DeployError> {
        let rows = self
            .inner
            .query(
                &self.inner.sql.journal,
                &[(&environment, Type::TEXT), (&run_id, Type::TEXT)],
                &format!("read the journal of run {run_id}"),
            )
            .await?;
        if rows.is_empty() {
            return Err(self.inner.err(
                format!("read the journal of run {run_id}: there is no such run in environment {environment}"),
                None,
            ));
        }
        let mut records = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            let Some(value) = row.get::<_, Option<serde_json::Value>>(0) else {
                continue;
            };
            let record: Record = serde_json::from_value(value).map_err(|e| {
                self.inner.err(
                    format!("read the journal of run {run_id}: record {} is not one this release reads: {e}", i + 1),
                    None,
                )
            })?;
            records.push(record);
        }
        if records.is_empty() {
            return Ok(None);
        }
        JournalState::replay(records).map(Some).map_err(|cause| {
            self.inner
                .err(format!("replay the journal of run {run_id}: {cause}"), None)
        })
    }

    fn journal_location(&self, environment: &str, run_id: &str) -> String {
        format!(
            "{} (schema {}, journal of run {run_id} in {environment})",
            self.inner.connector.config(),
            self.inner.schema
        )
    }

    async fn put_request(
        &self,
        environment: &str,
        request: &AddressedRequest,
    ) -> Result<(), DeployError> {
        let value = self.inner.json("the control request", request)?;
        self.inner
            .execute(
                &self.inner.sql.put_request,
                &[(&environment, Type::TEXT), (&value, Type::JSONB)],
                "leave the control request",
            )
            .await
            .map(drop)
    }

    async fn take_request(
        &self,
        environment: &str,
    ) -> Result<Option<AddressedRequest>, DeployError> {
        let rows = self
            .inner
            .query(
                &self.inner.sql.take_request,
                &[(&environment, Type::TEXT)],
                "take the control request",
            )
            .await?;
        self.inner.first_json(&rows, "a control request")
    }

    async fn save_report(&self, environment: &str, report: &Report) -> Result<String, DeployError> {
        let value = self.inner.json("the report", report)?;
        self.inner
            .execute(
                &self.inner.sql.save_report,
                &[
                    (&environment, Type::TEXT),
                    (&report.run_id, Type::TEXT),
                    (&value, Type::JSONB),
                ],
                &format!("save the report of run {}", report.run_id),
            )
            .await?;
        Ok(format!(
            "{} (schema {}, report of run {} in {environment})",
            self.inner.connector.config(),
            self.inner.schema,
            report.run_id
        ))
    }

    async fn report(&self, environment: &str, run_id: &str) -> Result<Option<Report>, DeployError> {
        let rows = self
            .inner
            .query(
                &self.inner.sql.report,
                &[(&environment, Type::TEXT), (&run_id, Type::TEXT)],
                &format!("read the report of run {run_id}"),
            )
            .await?;
        self.inner
            .first_json(&rows, &format!("the report of run {run_id}"))
    }

    async fn record_history(&self, entry: &HistoryEntry) -> Result<(), DeployError> {
        let value = self.inner.json("the history entry", entry)?;
        self.inner
            .execute(
                &self.inner.sql.record_history,
                &[
                    (&entry.environment, Type::TEXT),
                    (&entry.run_id, Type::TEXT),
                    (&value, Type::JSONB),
                ],
                &format!("record run {} in the history", entry.run_id),
            )
            .await
            .map(drop)
    }

    async fn history(&self, environment: &str) -> Result<Vec<HistoryEntry>, DeployError> {
        let rows = self
            .inner
            .query(
                &self.inner.sql.history,
                &[(&environment, Type::TEXT)],
                "read the history",
            )
            .await?;
        // An entry this release cannot read (written by a newer one) is passed over, as a torn
        // line of the local history is.
        Ok(rows
            .iter()
            .filter_map(|r| serde_json::from_value(r.get::<_, serde_json::Value>(0)).ok())
            .collect())
    }
}
