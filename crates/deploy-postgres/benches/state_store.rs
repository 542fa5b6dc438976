//! What the shared state store costs beside the local one, side by side in one run, the cases
//! in rotating order each round.
//!
//! ```text
//! BENCH_RUNS=5 cargo bench -p deploy-postgres --all-features --bench state_store
//! ```
//!
//! 1. **Journal appends** through the `StateStore` API: lock, `create_journal`, the run's
//!    `started` record, then 1000 timed appends of `step_started` / `step_finished` records
//!    taken from a real run of the plan below (their inverses included), `finished`, release.
//!    Stores: `LocalStateStore` (a temporary directory on this machine's disk), `PgStateStore`
//!    on the `testing` server (loopback; `fsync=off`, `synchronous_commit=off`), and
//!    `PgStateStore` on a second test server started with `fsync=on`, `synchronous_commit=on`
//!    and `full_page_writes=on` (every commit flushed to the same disk).
//! 2. **Whole runs**: the 100-step canary plan of `deploy-core`'s `engine_overhead` bench, run
//!    by an `Engine` over in-memory fakes with zero waits, with no store, the local store, and
//!    the two PostgreSQL stores. One store value per case for the whole bench (as one
//!    long-lived process has), so its tables are checked once; each run still opens its own
//!    lease session, as every run does. Each store is wrapped in one that adds up the time
//!    its calls take (lock, journal, appends, requests, report, history, release), so the
//!    table gives what the engine waited for the store beside the wall-time difference.
//!
//! `BENCH_ENGINE_RUNS` (default 10) engine runs per case per round. Prints Markdown tables.
//! Multi-threaded runtime, as the `deploy` example CLI uses.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use deploy_core::journal::{AddressedRequest, JournalState, LockInfo, Record};
use deploy_core::state::{
    HistoryEntry, Holder, JournalWriter, Lease, LocalStateStore, LockOptions, StateStore,
};
use deploy_core::testing::{FakeGate, FakeWorld};
use deploy_core::{CanaryStep, Engine, Outcome, Plan, PlanOptions, Policies, Release};
use deploy_core::{DeployError, Report};
use deploy_core::{Strategy, Version};
use deploy_postgres::PgStateStore;
use deploy_postgres::testing::PgServer;
use tokio_util::sync::CancellationToken;

const APPENDS: usize = 1000;

/// Nanoseconds spent inside a store's calls (its leases' and journals' included).
#[derive(Debug, Default)]
struct Spent(AtomicU64);

impl Spent {
    async fn time<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        let t = Instant::now();
        let out = f.await;
        self.0
            .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        out
    }

    fn take(&self) -> Duration {
        Duration::from_nanos(self.0.swap(0, Ordering::Relaxed))
    }
}

/// A timed store and what it adds up.
type TimedStore<'a> = (&'a Arc<dyn StateStore>, &'a Spent);

/// A store that adds up the time its calls take: what the engine waits for the store during a
/// run, apart from the engine's own timer ticks.
#[derive(Debug)]
struct Timed {
    inner: Arc<dyn StateStore>,
    spent: Arc<Spent>,
}

#[derive(Debug)]
struct TimedLease {
    inner: Box<dyn Lease>,
    spent: Arc<Spent>,
}

#[derive(Debug)]
struct TimedJournal {
    inner: Box<dyn JournalWriter>,
    spent: Arc<Spent>,
}

#[async_trait]
impl Lease for TimedLease {
    fn token(&self) -> u64 {
        self.inner.token()
    }

    fn lost(&self) -> Option<String> {
        self.inner.lost()
    }

    fn lost_signal(&self) -> Option<tokio::sync::watch::Receiver<Option<String>>> {
        self.inner.lost_signal()
    }

    async fn release(self: Box<Self>) {
        let spent = self.spent.clone();
        spent.time(self.inner.release()).await
    }

    async fn abandon(self: Box<Self>) {
        let spent = self.spent.clone();
        spent.time(self.inner.abandon()).await
    }
}

#[async_trait]
impl JournalWriter for TimedJournal {
    async fn append(&mut self, record: &Record) -> Result<(), DeployError> {
        self.spent.time(self.inner.append(record)).await
    }

    fn location(&self) -> String {
        self.inner.location()
    }
}

#[async_trait]
impl StateStore for Timed {
    fn location(&self) -> String {
        self.inner.location()
    }

    async fn lock(
        &self,
        environment: &str,
        holder: &LockInfo,
        options: LockOptions,
    ) -> Result<Box<dyn Lease>, DeployError> {
        let inner = self
            .spent
            .time(self.inner.lock(environment, holder, options))
            .await?;
        Ok(Box::new(TimedLease {
            inner,
            spent: self.spent.clone(),
        }))
    }

    async fn holder(&self, environment: &str) -> Result<Option<Holder>, DeployError> {
        self.spent.time(self.inner.holder(environment)).await
    }

    async fn create_journal(
        &self,
        lease: &dyn Lease,
        environment: &str,
        run_id: &str,
    ) -> Result<Box<dyn JournalWriter>, DeployError> {
        let inner = self
            .spent
            .time(self.inner.create_journal(lease, environment, run_id))
            .await?;
        Ok(Box::new(TimedJournal {
            inner,
            spent: self.spent.clone(),
        }))
    }

    async fn reopen_journal(
        &self,
        lease: &dyn Lease,
        environment: &str,
        run_id: &str,
    ) -> Result<Box<dyn JournalWriter>, DeployError> {
        let inner = self
            .spent
            .time(self.inner.reopen_journal(lease, environment, run_id))
            .await?;
        Ok(Box::new(TimedJournal {
            inner,
            spent: self.spent.clone(),
        }))
    }

    async fn runs(&self, environment: &str) -> Result<Vec<String>, DeployError> {
        self.spent.time(self.inner.runs(environment)).await
    }

    async fn journal(
        &self,
        environment: &str,
        run_id: &str,
    ) -> Result<Option<JournalState>, DeployError> {
        self.spent
            .time(self.inner.journal(environment, run_id))
            .await
    }

    fn journal_location(&self, environment: &str, run_id: &str) -> String {
        self.inner.journal_location(environment, run_id)
    }

    async fn put_request(
        &self,
        environment: &str,
        request: &AddressedRequest,
    ) -> Result<(), DeployError> {
        self.spent
            .time(self.inner.put_request(environment, request))
            .await
    }

    async fn take_request(
        &self,
        environment: &str,
    ) -> Result<Option<AddressedRequest>, DeployError> {
        self.spent.time(self.inner.take_request(environment)).await
    }

    async fn save_report(&self, environment: &str, report: &Report) -> Result<String, DeployError> {
        self.spent
            .time(self.inner.save_report(environment, report))
            .await
    }

    async fn report(&self, environment: &str, run_id: &str) -> Result<Option<Report>, DeployError> {
        self.spent
            .time(self.inner.report(environment, run_id))
            .await
    }

    async fn record_history(&self, entry: &HistoryEntry) -> Result<(), DeployError> {
        self.spent.time(self.inner.record_history(entry)).await
    }

    async fn history(&self, environment: &str) -> Result<Vec<HistoryEntry>, DeployError> {
        self.spent.time(self.inner.history(environment)).await
    }
}

fn env_num(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// As `engine_overhead`: no waits, one measurement per analysis.
fn policies() -> Policies {
    let mut p = Policies::default();
    p.probe.interval = Duration::ZERO;
    p.probe.healthy_threshold = 1;
    p.analysis.count = Some(1);
    p.analysis.interval = Duration::ZERO;
    p
}

/// 3 steps to bring the idle slot up + 48 × (SetWeight, Analyze) + promote = 100 steps.
fn strategy() -> Strategy {
    let mut steps = Vec::new();
    for i in 0..48u8 {
        steps.push(CanaryStep::SetWeight(i + 1));
        steps.push(CanaryStep::Analyze(Duration::ZERO));
    }
    Strategy::Canary { steps }
}

fn world() -> FakeWorld {
    FakeWorld::slots("1.0.0", "0.9.0").with_gate(FakeGate::passing("errors"))
}

fn engine(world: &FakeWorld, store: Option<&Arc<dyn StateStore>>) -> Engine {
    let e = Engine::new(world.environment("bench")).with_policies(policies());
    match store {
        Some(s) => e.with_state_store(s.clone()),
        None => e,
    }
}

async fn plan() -> Plan {
    engine(&world(), None)
        .plan(
            &strategy(),
            &Release::new(Version::new("2.0.0").unwrap()),
            &PlanOptions::default(),
        )
        .await
        .unwrap()
}

/// One promoted run of `plan` on fresh fakes; its wall time.
async fn engine_run(plan: &Plan, store: Option<&Arc<dyn StateStore>>) -> Duration {
    let world = world();
    let engine = engine(&world, store);
    let t = Instant::now();
    let r = engine
        .run(plan.clone(), &CancellationToken::new())
        .await
        .unwrap();
    let took = t.elapsed();
    assert_eq!(r.outcome, Outcome::Promoted);
    took
}

/// The journal of one real run of `plan` (local store): its `started` record and its step
/// records, in order.
async fn real_records(plan: &Plan) -> (Record, Vec<Record>) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn StateStore> = Arc::new(LocalStateStore::new(dir.path()));
    engine_run(plan, Some(&store)).await;
    let runs = dir.path().join("runs");
    let file = std::fs::read_dir(&runs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .expect("the run's journal");
    let text = std::fs::read_to_string(file).unwrap();
    let records: Vec<Record> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let started = records
        .iter()
        .find(|r| matches!(r, Record::Started { .. }))
        .cloned()
        .expect("a started record");
    let steps = records
        .into_iter()
        .filter(|r| matches!(r, Record::StepStarted { .. } | Record::StepFinished { .. }))
        .collect();
    (started, steps)
}

/// `APPENDS` records cycled from `steps`, renumbered so that they read as one long run.
fn append_records(steps: &[Record]) -> Vec<Record> {
    (0..APPENDS)
        .map(|i| match &steps[i % steps.len()] {
            Record::StepStarted { inverse, at, .. } => Record::StepStarted {
                index: i / 2,
                inverse: inverse.clone(),
                at: *at,
            },
            Record::StepFinished { error, backup, .. } => Record::StepFinished {
                index: i / 2,
                error: error.clone(),
                backup: backup.clone(),
            },
            other => other.clone(),
        })
        .collect()
}

#[derive(Default)]
struct Appends {
    all: Vec<Duration>,
    step_started: Vec<Duration>,
    step_finished: Vec<Duration>,
    open: Vec<Duration>,
    release: Vec<Duration>,
}

/// Lock, create a journal, append `started` (untimed), the timed `records`, `finished`, release.
async fn append_round(
    store: &dyn StateStore,
    run_id: &str,
    started: &Record,
    records: &[Record],
    out: &mut Appends,
) {
    let env = "append-bench";
    let t = Instant::now();
    let lease = store
        .lock(env, &LockInfo::this_process(run_id), LockOptions::default())
        .await
        .unwrap();
    let mut journal = store
        .create_journal(lease.as_ref(), env, run_id)
        .await
        .unwrap();
    out.open.push(t.elapsed());
    journal.append(started).await.unwrap();
    for r in records {
        let t = Instant::now();
        journal.append(r).await.unwrap();
        let took = t.elapsed();
        out.all.push(took);
        match r {
            Record::StepStarted { .. } => out.step_started.push(took),
            _ => out.step_finished.push(took),
        }
    }
    journal
        .append(&Record::Finished {
            outcome: Outcome::Promoted,
        })
        .await
        .unwrap();
    drop(journal);
    let t = Instant::now();
    lease.release().await;
    out.release.push(t.elapsed());
}

/// Nearest-rank quantile.
fn q(v: &[Duration], p: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

fn signed_ms(d: f64) -> String {
    format!("{:+.3}", d * 1000.0)
}

async fn pg_store(server: &PgServer) -> Arc<dyn StateStore> {
    let config = server.create_database().await.unwrap();
    let store = PgStateStore::builder(config).build().unwrap();
    store.prepare().await.unwrap();
    Arc::new(store)
}

async fn show(server: &PgServer, setting: &str) -> String {
    server
        .query("postgres", &format!("SHOW {setting}"))
        .await
        .unwrap()
}

#[tokio::main]
async fn main() {
    let runs = env_num("BENCH_RUNS", 5).max(1);
    let engine_runs = env_num("BENCH_ENGINE_RUNS", 10).max(1);

    let plan = plan().await;
    let steps = plan.steps.len();
    let (started, step_records) = real_records(&plan).await;
    assert_eq!(step_records.len(), 2 * steps, "two records per step");
    let records = append_records(&step_records);
    let bytes: Vec<usize> = records
        .iter()
        .map(|r| serde_json::to_vec(r).unwrap().len())
        .collect();

    let fast = PgServer::start().await.expect("start PostgreSQL");
    let durable = PgServer::start_with_settings(
        None,
        &[
            ("fsync", "on"),
            ("synchronous_commit", "on"),
            ("full_page_writes", "on"),
        ],
    )
    .await
    .expect("start PostgreSQL with fsync on");
    let mut settings = Vec::new();
    for s in [&fast, &durable] {
        settings.push(format!(
            "fsync={}, synchronous_commit={}, full_page_writes={}",
            show(s, "fsync").await,
            show(s, "synchronous_commit").await,
            show(s, "full_page_writes").await
        ));
    }
    let version = show(&fast, "server_version").await;

    let local_dir = tempfile::tempdir().unwrap();
    let append_dir = tempfile::tempdir().unwrap();
    let local: Arc<dyn StateStore> = Arc::new(LocalStateStore::new(local_dir.path()));
    let local_appends: Arc<dyn StateStore> = Arc::new(LocalStateStore::new(append_dir.path()));
    let pg_fast = pg_store(&fast).await;
    let pg_durable = pg_store(&durable).await;

    let append_stores: [(&str, &Arc<dyn StateStore>); 3] = [
        (
            "LocalStateStore (ext4, fsync per durable record)",
            &local_appends,
        ),
        ("PgStateStore, test server (fsync=off)", &pg_fast),
        ("PgStateStore, fsync=on, synchronous_commit=on", &pg_durable),
    ];
    let spent: Vec<Arc<Spent>> = (0..3).map(|_| Arc::new(Spent::default())).collect();
    let timed = |store: &Arc<dyn StateStore>, spent: &Arc<Spent>| -> Arc<dyn StateStore> {
        Arc::new(Timed {
            inner: store.clone(),
            spent: spent.clone(),
        })
    };
    let timed_local = timed(&local, &spent[0]);
    let timed_fast = timed(&pg_fast, &spent[1]);
    let timed_durable = timed(&pg_durable, &spent[2]);
    let run_cases: [(&str, Option<TimedStore<'_>>); 4] = [
        ("(a) no store", None),
        ("(b) LocalStateStore", Some((&timed_local, &spent[0]))),
        (
            "(c) PgStateStore, test server (fsync=off)",
            Some((&timed_fast, &spent[1])),
        ),
        (
            "(d) PgStateStore, fsync=on",
            Some((&timed_durable, &spent[2])),
        ),
    ];
    let mut appends: Vec<Appends> = (0..append_stores.len())
        .map(|_| Appends::default())
        .collect();
    let mut wall: Vec<Vec<Duration>> = vec![Vec::new(); run_cases.len()];
    let mut in_store: Vec<Vec<Duration>> = vec![Vec::new(); run_cases.len()];

    // Warm-up (not counted): one engine run per case, one short journal per store.
    for (_, store) in &run_cases {
        engine_run(&plan, store.map(|s| s.0)).await;
        if let Some((_, spent)) = store {
            spent.take();
        }
    }
    for (i, (_, store)) in append_stores.iter().enumerate() {
        append_round(
            store.as_ref(),
            &format!("warmup-{i}"),
            &started,
            &records[..20],
            &mut Appends::default(),
        )
        .await;
    }

    let bench_start = Instant::now();
    for round in 0..runs {
        for k in 0..append_stores.len() {
            let i = (k + round) % append_stores.len();
            append_round(
                append_stores[i].1.as_ref(),
                &format!("append-{round}-{i}"),
                &started,
                &records,
                &mut appends[i],
            )
            .await;
        }
        for rep in 0..engine_runs {
            for k in 0..run_cases.len() {
                let i = (k + round + rep) % run_cases.len();
                let store = run_cases[i].1;
                wall[i].push(engine_run(&plan, store.map(|s| s.0)).await);
                in_store[i].push(store.map_or(Duration::ZERO, |s| s.1.take()));
            }
        }
        eprintln!("round {}/{runs} done", round + 1);
    }
    let elapsed = bench_start.elapsed();

    println!(
        "state store cost, release build, {runs} rounds, cases in rotating order; PostgreSQL {version} on 127.0.0.1 (2 test servers); measured for {:.1} s",
        elapsed.as_secs_f64()
    );
    println!("test server: {}", settings[0]);
    println!("second server: {}", settings[1]);
    println!(
        "NOTE: the test server runs with fsync=off and synchronous_commit=off: its commits are not flushed to disk"
    );
    println!();
    println!(
        "journal appends through StateStore ({APPENDS} per round × {runs} rounds per store; records {}–{} bytes of JSON, mean {})",
        bytes.iter().min().unwrap(),
        bytes.iter().max().unwrap(),
        bytes.iter().sum::<usize>() / bytes.len()
    );
    println!();
    println!(
        "| store | appends | p50 ms | p99 ms | max ms | p50 step_started ms | p50 step_finished ms | lock + create_journal, median ms | release, median ms |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for ((name, _), a) in append_stores.iter().zip(&appends) {
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} |",
            a.all.len(),
            ms(q(&a.all, 0.5)),
            ms(q(&a.all, 0.99)),
            ms(q(&a.all, 1.0)),
            ms(q(&a.step_started, 0.5)),
            ms(q(&a.step_finished, 0.5)),
            ms(q(&a.open, 0.5)),
            ms(q(&a.release, 0.5)),
        );
    }
    println!();
    println!(
        "whole runs: the {steps}-step canary plan, fakes, zero waits, promoted ({} runs per case)",
        wall[0].len()
    );
    println!();
    println!(
        "| case | median ms | p90 ms | max ms | wall per step vs (a), ms | wall per step vs (b), ms | in store calls per run, median ms | in store calls per step, ms |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let med: Vec<f64> = wall.iter().map(|w| q(w, 0.5).as_secs_f64()).collect();
    let store_med: Vec<f64> = in_store.iter().map(|w| q(w, 0.5).as_secs_f64()).collect();
    for (i, ((name, store), w)) in run_cases.iter().zip(&wall).enumerate() {
        let vs = |j: usize| {
            if i > j {
                signed_ms((med[i] - med[j]) / steps as f64)
            } else {
                "—".to_owned()
            }
        };
        let (per_run, per_step) = match store {
            Some(_) => (
                format!("{:.3}", store_med[i] * 1000.0),
                format!("{:.3}", store_med[i] * 1000.0 / steps as f64),
            ),
            None => ("—".to_owned(), "—".to_owned()),
        };
        println!(
            "| {name} | {} | {} | {} | {} | {} | {per_run} | {per_step} |",
            ms(q(w, 0.5)),
            ms(q(w, 0.9)),
            ms(q(w, 1.0)),
            vs(0),
            vs(1),
        );
    }
    println!();
    let verdict = |x: f64| if x < 0.002 { "met" } else { "NOT met" };
    for (i, what) in [(2, "test server, fsync=off"), (3, "fsync=on")] {
        let wall_added = (med[i] - med[0]) / steps as f64;
        let in_store = store_med[i] / steps as f64;
        println!(
            "goal < 2 ms per step added by PgStateStore on loopback ({what}): {} — wall {:.3} ms per step more than no store, {:.3} ms per step inside store calls",
            verdict(wall_added.max(in_store)),
            wall_added * 1000.0,
            in_store * 1000.0,
        );
    }
}
