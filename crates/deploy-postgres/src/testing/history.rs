//! Deterministic migration histories of the kind real projects have, in each layout the runner
//! reads, with the means to apply them the plain way and to compare schemas.
//!
//! [`History::generate`] models a schema that grows the way an application's does — tables
//! created, columns added, backfilled, renamed, retyped and dropped, indexes (some built
//! `CONCURRENTLY`, alone in their file, as they must be), foreign keys, checks and unique
//! constraints, views, enum types gaining values, trigger functions, comments, rows inserted
//! and fixed — and writes each change as its tool names it:
//!
//! - Flyway: `V1__…`, `V1.1__…`, `V1_2_9__…` then `V1_2_10__…`, a `U<version>__…` undo file
//!   for every versioned one, and a few `R__…` repeatable migrations: views only (`CREATE OR
//!   REPLACE VIEW`), which no down file drops — a revert past them drops the views and
//!   forgets the repeatables, and the next migrate creates them again, which it could not do
//!   for a function;
//! - golang-migrate: `000001_….up.sql` / `.down.sql`;
//! - diesel: `00000000000000_diesel_initial_setup`, then `YYYY-MM-DD-HHMMSS_…` folders and,
//!   after an upgrade of the CLI, `YYYY-MM-DD-HHMMSS-0000_…` ones, mixed; `metadata.toml`
//!   with `run_in_transaction = false` for a few.
//!
//! Some files carry their own `BEGIN; … COMMIT;`. Every down file undoes its up file, so that
//! reverting everything leaves an empty schema. The same seed gives the same files.
//!
//! ```no_run
//! # async fn demo() -> deploy_core::Result<()> {
//! use deploy_postgres::Layout;
//! use deploy_postgres::testing::PgServer;
//! use deploy_postgres::testing::history::{History, schema_dump};
//!
//! let history = History::generate(Layout::Flyway, 200, 7);
//! let dir = tempfile::tempdir().unwrap();
//! history.write_to(dir.path())?;
//! let server = PgServer::start().await?;
//! let db = server.create_database().await?;
//! history.apply_plain(&server, &db.dbname, dir.path()).await?;
//! assert!(schema_dump(&server, &db.dbname).await?.contains("CREATE TABLE"));
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use deploy_core::{Error, ErrorKind, Result};

use super::PgServer;
use crate::{Layout, Transaction};

/// The history table the runner writes by default, left out of [`schema_dump`].
pub const HISTORY_TABLE: &str = "schema_version";

/// How an up (or down) file stands to transactions, as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Body {
    /// Statements that can run in one transaction, without `BEGIN`/`COMMIT`.
    Plain,
    /// One `BEGIN; … COMMIT;` around the whole file.
    OwnTransaction,
    /// A single `CREATE INDEX CONCURRENTLY` or `DROP INDEX CONCURRENTLY` statement, which
    /// cannot run inside a transaction block.
    Concurrently,
}

/// What a migration changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Change {
    /// diesel's `00000000000000_diesel_initial_setup` (its two helper functions).
    DieselSetup,
    /// `CREATE TABLE`, sometimes with an inline foreign key, a comment, or diesel's
    /// `updated_at` trigger.
    CreateTable,
    /// `ALTER TABLE … ADD COLUMN`.
    AddColumn,
    /// A column added, then filled from existing rows (`UPDATE`).
    Backfill,
    /// `CREATE [UNIQUE] INDEX`, sometimes partial or on two columns.
    AddIndex,
    /// `CREATE [UNIQUE] INDEX CONCURRENTLY`, alone in its file.
    AddIndexConcurrently,
    /// A foreign key, sometimes `NOT VALID` then validated.
    AddForeignKey,
    /// A check constraint.
    AddCheck,
    /// A unique constraint.
    AddUnique,
    /// `CREATE VIEW`.
    CreateView,
    /// `ALTER COLUMN … SET DEFAULT` / `DROP DEFAULT`.
    AlterDefault,
    /// `ALTER COLUMN … TYPE` (a `varchar` widened, an `integer` made `bigint`).
    AlterType,
    /// `ALTER TABLE … DROP COLUMN` (its down adds it back).
    DropColumn,
    /// `INSERT` of reference rows (its down deletes them).
    InsertRows,
    /// An `UPDATE` fixing data (its down cannot bring the old values back).
    UpdateRows,
    /// `RENAME COLUMN`.
    RenameColumn,
    /// `ALTER TABLE … RENAME TO`.
    RenameTable,
    /// `CREATE TYPE … AS ENUM` and a column of that type.
    CreateEnum,
    /// `ALTER TYPE … ADD VALUE`, alone in its file (its down recreates the type).
    AddEnumValue,
    /// A PL/pgSQL trigger function and its trigger.
    TriggerFunction,
    /// `COMMENT ON COLUMN`.
    Comment,
}

impl Change {
    /// Every change a history of 200 migrations holds at least once (diesel's setup only in
    /// diesel histories).
    pub const ALL: [Change; 21] = [
        Change::DieselSetup,
        Change::CreateTable,
        Change::AddColumn,
        Change::Backfill,
        Change::AddIndex,
        Change::AddIndexConcurrently,
        Change::AddForeignKey,
        Change::AddCheck,
        Change::AddUnique,
        Change::CreateView,
        Change::AlterDefault,
        Change::AlterType,
        Change::DropColumn,
        Change::InsertRows,
        Change::UpdateRows,
        Change::RenameColumn,
        Change::RenameTable,
        Change::CreateEnum,
        Change::AddEnumValue,
        Change::TriggerFunction,
        Change::Comment,
    ];
}

/// One versioned migration of a [`History`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryMigration {
    /// Its version as the runner records it: `1.2.10`, `17`, `202401051015000000`.
    pub version: String,
    /// Its name (`add_email_to_users`).
    pub name: String,
    /// How its tool names it: the up file, or diesel's folder.
    pub label: String,
    /// The up file, relative to the history's folder.
    pub up: String,
    /// The down file, relative to the history's folder.
    pub down: String,
    /// How the up file stands to transactions.
    pub body: Body,
    /// How the down file stands to transactions.
    pub down_body: Body,
    /// diesel: its `metadata.toml` says `run_in_transaction = false`.
    pub no_transaction_metadata: bool,
    /// What it changes.
    pub change: Change,
}

impl HistoryMigration {
    /// Whether `t` is how the runner should run its up file: its own transaction for
    /// [`Body::OwnTransaction`], outside one for [`Body::Concurrently`] or diesel's
    /// `run_in_transaction = false`, wrapped otherwise.
    pub fn runs_as(&self, t: &Transaction) -> bool {
        match (self.body, t) {
            (Body::Concurrently, Transaction::Outside(_)) => true,
            (_, Transaction::Outside(_)) => self.no_transaction_metadata,
            (Body::OwnTransaction, Transaction::Own) => !self.no_transaction_metadata,
            (Body::Plain, Transaction::Wrapped) => !self.no_transaction_metadata,
            _ => false,
        }
    }
}

/// A generated migration history: its files, and what each migration is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    layout: Layout,
    files: BTreeMap<String, String>,
    migrations: Vec<HistoryMigration>,
    repeatables: Vec<String>,
}

impl History {
    /// A history of `count` versioned migrations in `layout` (plus, for Flyway, three or four
    /// repeatable ones), the same for the same `seed`.
    pub fn generate(layout: Layout, count: usize, seed: u64) -> Self {
        Generator::new(layout, seed).run(count)
    }

    /// Its layout.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Every file, by path relative to the folder, with its content.
    pub fn files(&self) -> &BTreeMap<String, String> {
        &self.files
    }

    /// The versioned migrations, in the order their tool applies them.
    pub fn migrations(&self) -> &[HistoryMigration] {
        &self.migrations
    }

    /// The repeatable migrations (Flyway's `R__…` files), in the order Flyway applies them
    /// (by description).
    pub fn repeatables(&self) -> &[String] {
        &self.repeatables
    }

    /// The same history with the up files of the migrations `which` selects — and every
    /// seventh one without a transaction of its own or `CONCURRENTLY` — saved with a UTF-8 byte order mark, as some Windows editors save
    /// them. Flyway and psql skip the mark; golang-migrate and diesel send it to the server,
    /// which refuses it, so it belongs in Flyway histories only.
    pub fn with_byte_order_marks(mut self, which: impl Fn(&HistoryMigration) -> bool) -> Self {
        for (i, m) in self.migrations.iter().enumerate() {
            let chosen = which(m) || (i % 7 == 3 && m.body == Body::Plain);
            if let Some(text) = self.files.get_mut(&m.up).filter(|_| chosen)
                && !text.starts_with('\u{feff}')
            {
                text.insert(0, '\u{feff}');
            }
        }
        self
    }

    /// Write every file under `dir` (created if missing).
    pub fn write_to(&self, dir: &Path) -> Result<()> {
        for (rel, content) in &self.files {
            let path = dir.join(rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| Error::io("create", parent.display().to_string(), e))?;
            }
            std::fs::write(&path, content)
                .map_err(|e| Error::io("write", path.display().to_string(), e))?;
        }
        Ok(())
    }

    /// Apply the whole history written in `dir` to `db` the plain way: each up file in order
    /// with `psql -v ON_ERROR_STOP=1 -1 -f FILE` (without `-1` for a file with its own
    /// transaction or a `CONCURRENTLY` statement), then the repeatable migrations.
    pub async fn apply_plain(&self, server: &PgServer, db: &str, dir: &Path) -> Result<()> {
        self.apply_plain_range(server, db, dir, 0..self.migrations.len())
            .await?;
        self.apply_plain_repeatables(server, db, dir).await
    }

    /// Apply the versioned migrations `range` (indexes into
    /// [`migrations`](Self::migrations)) the plain way, as [`apply_plain`](Self::apply_plain)
    /// does.
    pub async fn apply_plain_range(
        &self,
        server: &PgServer,
        db: &str,
        dir: &Path,
        range: std::ops::Range<usize>,
    ) -> Result<()> {
        for m in &self.migrations[range] {
            psql_file(server, db, &dir.join(&m.up), m.body == Body::Plain).await?;
        }
        Ok(())
    }

    /// Apply the repeatable migrations the plain way, each with `psql -1 -f`.
    pub async fn apply_plain_repeatables(
        &self,
        server: &PgServer,
        db: &str,
        dir: &Path,
    ) -> Result<()> {
        for r in &self.repeatables {
            psql_file(server, db, &dir.join(r), true).await?;
        }
        Ok(())
    }
}

/// `tool` from the server's binary directory, else from `PATH`. Debian's `/usr/bin/psql` is a
/// Perl wrapper that costs some 25 ms a call: a history is hundreds of calls.
fn client(server: &PgServer, tool: &str) -> PathBuf {
    let bundled = server.bin_dir().join(tool);
    if bundled.is_file() {
        bundled
    } else {
        PathBuf::from(tool)
    }
}

/// Run one file with psql, stopping at the first error; in one transaction when `single`.
async fn psql_file(server: &PgServer, db: &str, path: &Path, single: bool) -> Result<()> {
    let mut cmd = tokio::process::Command::new(client(server, "psql"));
    cmd.args([
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        "127.0.0.1",
        "-U",
        "postgres",
    ])
    .arg("-p")
    .arg(server.port().to_string())
    .arg("-d")
    .arg(db);
    if single {
        cmd.arg("-1");
    }
    let out = cmd
        .arg("-f")
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| Error::io("run psql for", path.display().to_string(), e))?;
    if !out.status.success() {
        return Err(Error::new(
            ErrorKind::CommandFailed,
            format!("apply {} with psql to", path.display()),
            format!("test database {db}"),
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    Ok(())
}

/// `pg_dump --schema-only` of `db`, without the runner's history table ([`HISTORY_TABLE`]),
/// owners or privileges, and normalised (see [`normalize_dump`]) so that two databases with
/// the same schema give the same text. An empty schema gives an empty string.
pub async fn schema_dump(server: &PgServer, db: &str) -> Result<String> {
    schema_dump_without(server, db, HISTORY_TABLE).await
}

/// [`schema_dump`] leaving out the table `history_table` instead.
pub async fn schema_dump_without(
    server: &PgServer,
    db: &str,
    history_table: &str,
) -> Result<String> {
    let out = tokio::process::Command::new(client(server, "pg_dump"))
        .args([
            "--schema-only",
            "--no-owner",
            "--no-privileges",
            "-T",
            history_table,
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
        ])
        .arg("-p")
        .arg(server.port().to_string())
        .arg("-d")
        .arg(db)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| Error::io("run pg_dump for", format!("test database {db}"), e))?;
    if !out.status.success() {
        return Err(Error::new(
            ErrorKind::CommandFailed,
            "dump the schema of",
            format!("test database {db}"),
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    Ok(normalize_dump(&String::from_utf8_lossy(&out.stdout)))
}

/// A dump without what differs between two dumps of the same schema: comment lines, blank
/// lines, `SET …` and `set_config` lines, and the `\restrict`/`\unrestrict` lines (with their
/// random key) of newer pg_dump releases.
pub fn normalize_dump(dump: &str) -> String {
    dump.lines()
        .map(str::trim_end)
        .filter(|l| {
            !(l.trim().is_empty()
                || l.starts_with("--")
                || l.starts_with("SET ")
                || l.starts_with("SELECT pg_catalog.set_config(")
                || l.starts_with("\\restrict")
                || l.starts_with("\\unrestrict"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------------------------
// The generator.

/// SplitMix64: small, fast, and the same everywhere.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ty {
    Text,
    Varchar(u32),
    Int,
    BigInt,
    Bool,
    Numeric,
    Timestamptz,
    Timestamp,
    Jsonb,
    Uuid,
    Enum(String),
}

impl Ty {
    fn sql(&self) -> String {
        match self {
            Ty::Text => "text".into(),
            Ty::Varchar(n) => format!("varchar({n})"),
            Ty::Int => "integer".into(),
            Ty::BigInt => "bigint".into(),
            Ty::Bool => "boolean".into(),
            Ty::Numeric => "numeric(12,2)".into(),
            Ty::Timestamptz => "timestamptz".into(),
            Ty::Timestamp => "timestamp".into(),
            Ty::Jsonb => "jsonb".into(),
            Ty::Uuid => "uuid".into(),
            Ty::Enum(name) => name.clone(),
        }
    }
}

/// What a column is for, which decides what later migrations may do with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The primary key.
    Id,
    /// The `text NOT NULL` column rows are inserted by (`name`, `title`, `label`).
    Key,
    /// Ordinary data: written by updates, given defaults, checked, indexed, dropped.
    Plain,
    /// Never written, so a unique constraint or index always holds.
    Unique,
    /// A reference to another table's `id` (by its index), never written.
    Ref(usize),
    /// Read by a trigger function by name (diesel's `updated_at`, `touched_at`): never
    /// renamed, retyped or dropped.
    Pinned,
    /// Of the enum type with this index; never written, indexed or viewed.
    Enum(usize),
}

#[derive(Debug, Clone)]
struct Col {
    name: String,
    ty: Ty,
    not_null: bool,
    default: Option<String>,
    role: Role,
    /// Indexes, constraints and views depending on it: while above zero it is not retyped or
    /// dropped.
    deps: u32,
    /// Created with its table.
    at_creation: bool,
    retyped: bool,
    /// The smallest length it ever had (`varchar`): values written fit it.
    min_len: Option<u32>,
    comment: Option<String>,
    fk: bool,
    unique: bool,
    checked: bool,
}

impl Col {
    fn new(name: &str, ty: Ty, role: Role) -> Self {
        let min_len = match ty {
            Ty::Varchar(n) => Some(n),
            _ => None,
        };
        Col {
            name: name.to_owned(),
            ty,
            not_null: false,
            default: None,
            role,
            deps: 0,
            at_creation: false,
            retyped: false,
            min_len,
            comment: None,
            fk: false,
            unique: false,
            checked: false,
        }
    }

    fn with_default(mut self, default: &str) -> Self {
        self.not_null = true;
        self.default = Some(default.to_owned());
        self
    }

    /// Its definition in `ADD COLUMN`.
    fn definition(&self) -> String {
        let mut s = format!("{} {}", self.name, self.ty.sql());
        if self.not_null {
            s.push_str(" NOT NULL");
        }
        if let Some(d) = &self.default {
            s.push_str(&format!(" DEFAULT {d}"));
        }
        s
    }

    fn writable(&self) -> bool {
        self.role == Role::Plain
            && matches!(
                self.ty,
                Ty::Text | Ty::Varchar(_) | Ty::Int | Ty::Bool | Ty::Numeric | Ty::Timestamptz
            )
    }
}

#[derive(Debug, Clone)]
struct Table {
    name: String,
    singular: String,
    cols: Vec<Col>,
    used_cols: HashSet<String>,
    renamed: bool,
    has_trigger_function: bool,
    /// The rows inserted so far (for unique values).
    next_row: u32,
}

impl Table {
    fn key(&self) -> &str {
        &self
            .cols
            .iter()
            .find(|c| c.role == Role::Key)
            .expect("every table has its key column")
            .name
    }
}

#[derive(Debug, Clone)]
struct EnumType {
    name: String,
    labels: Vec<String>,
    table: usize,
    spare: Vec<&'static str>,
}

/// One migration before it is written in a layout.
#[derive(Debug, Clone)]
struct Step {
    name: String,
    change: Change,
    up: Vec<String>,
    down: Vec<String>,
    body: Body,
    down_body: Body,
    own_down: bool,
    no_transaction_metadata: bool,
    /// A comment heading the up file.
    header: Option<String>,
    /// For steps whose down has nothing to do: what it says instead.
    empty_down: Option<&'static str>,
}

impl Step {
    fn new(name: String, change: Change, up: Vec<String>, down: Vec<String>) -> Self {
        Step {
            name,
            change,
            up,
            down,
            body: Body::Plain,
            down_body: Body::Plain,
            own_down: false,
            no_transaction_metadata: false,
            header: None,
            empty_down: None,
        }
    }
}

const TABLES: &[(&str, &str)] = &[
    ("users", "user"),
    ("accounts", "account"),
    ("organizations", "organization"),
    ("teams", "team"),
    ("projects", "project"),
    ("tasks", "task"),
    ("orders", "order"),
    ("order_items", "order_item"),
    ("products", "product"),
    ("categories", "category"),
    ("invoices", "invoice"),
    ("payments", "payment"),
    ("refunds", "refund"),
    ("shipments", "shipment"),
    ("addresses", "address"),
    ("sessions", "session"),
    ("audit_events", "audit_event"),
    ("comments", "comment"),
    ("tags", "tag"),
    ("notifications", "notification"),
    ("subscriptions", "subscription"),
    ("plans", "plan"),
    ("coupons", "coupon"),
    ("warehouses", "warehouse"),
    ("suppliers", "supplier"),
    ("reviews", "review"),
    ("carts", "cart"),
    ("documents", "document"),
    ("attachments", "attachment"),
    ("webhooks", "webhook"),
    ("api_keys", "api_key"),
    ("feature_flags", "feature_flag"),
    ("messages", "message"),
    ("channels", "channel"),
    ("devices", "device"),
    ("reports", "report"),
    ("exports", "export"),
    ("locations", "location"),
    ("vendors", "vendor"),
    ("contracts", "contract"),
    ("tickets", "ticket"),
    ("milestones", "milestone"),
    ("releases", "release"),
    ("builds", "build"),
    ("artifacts", "artifact"),
    ("schedules", "schedule"),
];

/// Columns a migration may add: name, type, `NOT NULL DEFAULT`, role (`true`: unique-able).
const COLUMNS: &[(&str, ColTy, Option<&str>, bool)] = &[
    ("notes", ColTy::Text, None, false),
    ("description", ColTy::Text, None, false),
    ("email", ColTy::Varchar(120), None, false),
    ("phone", ColTy::Varchar(32), None, false),
    ("country_code", ColTy::Varchar(2), None, false),
    ("quantity", ColTy::Int, None, false),
    ("priority", ColTy::Int, Some("0"), false),
    ("score", ColTy::Int, None, false),
    ("retries", ColTy::Int, Some("0"), false),
    ("sort_order", ColTy::Int, Some("0"), false),
    ("is_active", ColTy::Bool, Some("true"), false),
    ("is_archived", ColTy::Bool, Some("false"), false),
    ("amount", ColTy::Numeric, None, false),
    ("balance", ColTy::Numeric, Some("0"), false),
    ("archived_at", ColTy::Timestamptz, None, false),
    ("last_seen_at", ColTy::Timestamptz, None, false),
    ("locale", ColTy::Varchar(16), Some("'en'"), false),
    ("timezone", ColTy::Text, Some("'UTC'"), false),
    ("color", ColTy::Varchar(7), None, false),
    ("settings", ColTy::Jsonb, Some("'{}'"), false),
    ("weight_grams", ColTy::Int, None, false),
    ("source", ColTy::Text, None, false),
    ("summary", ColTy::Varchar(200), None, false),
    ("external_ref", ColTy::Varchar(64), None, true),
    ("slug", ColTy::Text, None, true),
    ("code", ColTy::Varchar(32), None, true),
    ("public_id", ColTy::Text, None, true),
    ("token", ColTy::Text, None, true),
    ("uuid", ColTy::Uuid, Some("gen_random_uuid()"), true),
];

/// [`Ty`] without the enum (for constants).
#[derive(Debug, Clone, Copy)]
enum ColTy {
    Text,
    Varchar(u32),
    Int,
    Bool,
    Numeric,
    Timestamptz,
    Jsonb,
    Uuid,
}

impl ColTy {
    fn ty(self) -> Ty {
        match self {
            ColTy::Text => Ty::Text,
            ColTy::Varchar(n) => Ty::Varchar(n),
            ColTy::Int => Ty::Int,
            ColTy::Bool => Ty::Bool,
            ColTy::Numeric => Ty::Numeric,
            ColTy::Timestamptz => Ty::Timestamptz,
            ColTy::Jsonb => Ty::Jsonb,
            ColTy::Uuid => Ty::Uuid,
        }
    }
}

const ENUMS: &[(&str, &[&str], &[&str])] = &[
    (
        "status",
        &["pending", "active", "suspended"],
        &["archived", "cancelled", "on_hold"],
    ),
    (
        "kind",
        &["standard", "premium"],
        &["trial", "internal", "legacy"],
    ),
    (
        "state",
        &["draft", "published"],
        &["in_review", "retired", "scheduled"],
    ),
    (
        "stage",
        &["new", "qualified", "won"],
        &["lost", "negotiation", "dormant"],
    ),
    ("channel", &["email", "sms"], &["push", "webhook", "voice"]),
];

const ID_STYLES: &[&str] = &[
    "bigserial PRIMARY KEY",
    "bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
    "serial PRIMARY KEY",
    "bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
];

/// The weight of each change when the generator picks one at random.
const WEIGHTS: &[(Change, u32)] = &[
    (Change::CreateTable, 9),
    (Change::AddColumn, 16),
    (Change::Backfill, 4),
    (Change::AddIndex, 9),
    (Change::AddIndexConcurrently, 5),
    (Change::AddForeignKey, 5),
    (Change::AddCheck, 4),
    (Change::AddUnique, 3),
    (Change::CreateView, 4),
    (Change::AlterDefault, 5),
    (Change::AlterType, 3),
    (Change::DropColumn, 3),
    (Change::InsertRows, 8),
    (Change::UpdateRows, 5),
    (Change::RenameColumn, 4),
    (Change::RenameTable, 2),
    (Change::CreateEnum, 3),
    (Change::AddEnumValue, 3),
    (Change::TriggerFunction, 2),
    (Change::Comment, 3),
];

const DIESEL_SETUP_UP: &str = r"-- This file was automatically created by Diesel to setup helper functions
-- and other internal bookkeeping. This file is safe to edit, any future
-- changes will be added to existing projects as new migrations.




-- Sets up a trigger for the given table to automatically set a column called
-- `updated_at` whenever the row is modified (unless `updated_at` was included
-- in the modified columns)
--
-- # Example
--
-- ```sql
-- CREATE TABLE users (id SERIAL PRIMARY KEY, updated_at TIMESTAMP NOT NULL DEFAULT NOW());
--
-- SELECT diesel_manage_updated_at('users');
-- ```
CREATE OR REPLACE FUNCTION diesel_manage_updated_at(_tbl regclass) RETURNS VOID AS $$
BEGIN
    EXECUTE format('CREATE TRIGGER set_updated_at BEFORE UPDATE ON %s
                    FOR EACH ROW EXECUTE PROCEDURE diesel_set_updated_at()', _tbl);
END;
$$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION diesel_set_updated_at() RETURNS trigger AS $$
BEGIN
    IF (
        NEW IS DISTINCT FROM OLD AND
        NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at
    ) THEN
        NEW.updated_at := current_timestamp;
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
";

const DIESEL_SETUP_DOWN: &str = r"-- This file was automatically created by Diesel to setup helper functions
-- and other internal bookkeeping. This file is safe to edit, any future
-- changes will be added to existing projects as new migrations.

DROP FUNCTION IF EXISTS diesel_manage_updated_at(_tbl regclass);
DROP FUNCTION IF EXISTS diesel_set_updated_at();
";

struct Generator {
    rng: Rng,
    layout: Layout,
    tables: Vec<Table>,
    enums: Vec<EnumType>,
    /// Names of relations, types, constraints and functions ever used: never reused.
    names: HashSet<String>,
    steps: Vec<Step>,
    seen: BTreeSet<Change>,
    concurrently_seen: usize,
}

impl Generator {
    fn new(layout: Layout, seed: u64) -> Self {
        Generator {
            // The layout in the seed: one seed, three different histories.
            rng: Rng(seed
                ^ 0x5EED_0F41_5701_2345
                ^ match layout {
                    Layout::Flyway => 0,
                    Layout::GolangMigrate => 0x6001_0000_0000,
                    Layout::Diesel => 0xD1E5_0000_0000,
                }),
            layout,
            tables: Vec::new(),
            enums: Vec::new(),
            names: HashSet::new(),
            steps: Vec::new(),
            seen: BTreeSet::new(),
            concurrently_seen: 0,
        }
    }

    /// `base`, or `base_2`, `base_3`…: a name not used before.
    fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_owned();
        let mut k = 2;
        while self.names.contains(&name) {
            name = format!("{base}_{k}");
            k += 1;
        }
        self.names.insert(name.clone());
        name
    }

    fn pick_table(&mut self, ok: impl Fn(&Table) -> bool) -> Option<usize> {
        let c: Vec<usize> = (0..self.tables.len())
            .filter(|&i| ok(&self.tables[i]))
            .collect();
        (!c.is_empty()).then(|| c[self.rng.below(c.len())])
    }

    fn pick_col(&mut self, ok: impl Fn(&Table, &Col) -> bool) -> Option<(usize, usize)> {
        let mut c = Vec::new();
        for (ti, t) in self.tables.iter().enumerate() {
            for (ci, col) in t.cols.iter().enumerate() {
                if ok(t, col) {
                    c.push((ti, ci));
                }
            }
        }
        (!c.is_empty()).then(|| c[self.rng.below(c.len())])
    }

    fn run(mut self, count: usize) -> History {
        if self.layout == Layout::Diesel && count > 0 {
            let mut s = Step::new(
                "diesel_initial_setup".into(),
                Change::DieselSetup,
                Vec::new(),
                Vec::new(),
            );
            s.header = Some(DIESEL_SETUP_UP.into());
            s.empty_down = Some(DIESEL_SETUP_DOWN);
            self.names.insert("diesel_manage_updated_at".into());
            self.names.insert("diesel_set_updated_at".into());
            self.seen.insert(Change::DieselSetup);
            self.steps.push(s);
        }
        let own_percent = match self.layout {
            Layout::GolangMigrate => 25,
            Layout::Flyway => 10,
            Layout::Diesel => 6,
        };
        while self.steps.len() < count {
            let i = self.steps.len();
            let mut step = self.next_step(i);
            self.seen.insert(step.change);
            self.decide_transactions(&mut step, i, own_percent);
            // Teams deploying under load bound their lock waits in the file itself.
            if step.body != Body::Concurrently
                && step.change != Change::AddEnumValue
                && self.rng.chance(5)
            {
                step.up.insert(0, "SET lock_timeout = '5s';".into());
            }
            if step.header.is_none() && self.rng.chance(30) {
                step.header = Some(format!("-- {}\n", step.name.replace('_', " ")));
            }
            self.steps.push(step);
        }
        let repeatables = if self.layout == Layout::Flyway {
            self.repeatables()
        } else {
            Vec::new()
        };
        self.write(repeatables)
    }

    fn decide_transactions(&mut self, step: &mut Step, i: usize, own_percent: u64) {
        if step.body == Body::Concurrently {
            self.concurrently_seen += 1;
            // diesel needs the metadata for CONCURRENTLY; a few folders lack it (the runner
            // sees the statement anyway).
            step.no_transaction_metadata =
                self.layout == Layout::Diesel && self.concurrently_seen % 4 != 1;
            return;
        }
        if step.change == Change::AddEnumValue || step.change == Change::DieselSetup {
            return;
        }
        // A file with its own transaction near the middle, whatever the dice say: the
        // failure tests need one there.
        let recent_own = self.steps[i.saturating_sub(8)..]
            .iter()
            .any(|s| s.body == Body::OwnTransaction);
        if self.rng.chance(own_percent) || ((98..=110).contains(&i) && !recent_own) {
            step.body = Body::OwnTransaction;
            step.own_down = self.rng.chance(70);
        } else if self.rng.chance(3) {
            step.own_down = true;
        }
        if self.layout == Layout::Diesel && step.body == Body::Plain && i % 45 == 20 {
            step.no_transaction_metadata = true;
        }
    }

    fn next_step(&mut self, i: usize) -> Step {
        if self.tables.len() < 3 {
            return self.create_table();
        }
        if i >= 12 && i.is_multiple_of(6) {
            let unseen: Vec<Change> = Change::ALL
                .iter()
                .copied()
                .filter(|c| !self.seen.contains(c) && *c != Change::DieselSetup)
                .collect();
            for c in unseen {
                if let Some(s) = self.try_change(c) {
                    return s;
                }
            }
        }
        let total: u32 = WEIGHTS.iter().map(|(_, w)| w).sum();
        loop {
            let mut roll = self.rng.below(total as usize) as u32;
            let mut change = Change::CreateTable;
            for (c, w) in WEIGHTS {
                if roll < *w {
                    change = *c;
                    break;
                }
                roll -= w;
            }
            if let Some(s) = self.try_change(change) {
                return s;
            }
        }
    }

    fn try_change(&mut self, change: Change) -> Option<Step> {
        match change {
            Change::DieselSetup => None,
            Change::CreateTable => Some(self.create_table()),
            Change::AddColumn => self.add_column(false),
            Change::Backfill => self.add_column(true),
            Change::AddIndex => self.add_index(false),
            Change::AddIndexConcurrently => self.add_index(true),
            Change::AddForeignKey => self.add_foreign_key(),
            Change::AddCheck => self.add_check(),
            Change::AddUnique => self.add_unique(),
            Change::CreateView => self.create_view(),
            Change::AlterDefault => self.alter_default(),
            Change::AlterType => self.alter_type(),
            Change::DropColumn => self.drop_column(),
            Change::InsertRows => self.insert_rows(),
            Change::UpdateRows => self.update_rows(),
            Change::RenameColumn => self.rename_column(),
            Change::RenameTable => self.rename_table(),
            Change::CreateEnum => self.create_enum(),
            Change::AddEnumValue => self.add_enum_value(),
            Change::TriggerFunction => self.trigger_function(),
            Change::Comment => self.comment(),
        }
    }

    fn create_table(&mut self) -> Step {
        let free: Vec<(&str, &str)> = TABLES
            .iter()
            .copied()
            .filter(|(p, _)| !self.names.contains(*p))
            .collect();
        let (plural, singular) = if free.is_empty() {
            let (p, s) = *self.rng.pick(TABLES);
            let mut k = 2;
            while self.names.contains(&format!("{p}_{k}")) {
                k += 1;
            }
            (format!("{p}_{k}"), format!("{s}_{k}"))
        } else {
            let (p, s) = *self.rng.pick(&free);
            (p.to_owned(), s.to_owned())
        };
        for n in [
            plural.clone(),
            format!("{plural}_pkey"),
            format!("{plural}_id_seq"),
        ] {
            self.names.insert(n);
        }
        let id_style = *self.rng.pick(ID_STYLES);
        let id_ty = if id_style.starts_with("serial") {
            Ty::Int
        } else {
            Ty::BigInt
        };
        let key = *self.rng.pick(&["name", "title", "label"]);
        let mut defs = vec![
            format!("    id {id_style}"),
            format!("    {key} text NOT NULL"),
        ];
        let mut cols = vec![Col::new("id", id_ty, Role::Id), {
            let mut c = Col::new(key, Ty::Text, Role::Key);
            c.not_null = true;
            c
        }];
        if !self.tables.is_empty() && self.rng.chance(45) {
            let parent = self.rng.below(self.tables.len());
            let col = format!("{}_id", self.tables[parent].singular);
            let on_delete = *self
                .rng
                .pick(&["", " ON DELETE CASCADE", " ON DELETE SET NULL"]);
            defs.push(format!(
                "    {col} bigint REFERENCES {} (id){on_delete}",
                self.tables[parent].name
            ));
            self.names.insert(format!("{plural}_{col}_fkey"));
            let mut c = Col::new(&col, Ty::BigInt, Role::Ref(parent));
            c.fk = true;
            c.deps = 1;
            cols.push(c);
        }
        defs.push("    created_at timestamptz NOT NULL DEFAULT now()".into());
        cols.push(Col::new("created_at", Ty::Timestamptz, Role::Plain).with_default("now()"));
        let mut up = Vec::new();
        if self.layout == Layout::Diesel && self.rng.chance(50) {
            defs.push("    updated_at timestamp NOT NULL DEFAULT now()".into());
            cols.push(Col::new("updated_at", Ty::Timestamp, Role::Pinned).with_default("now()"));
            up.push(format!("CREATE TABLE {plural} (\n{}\n);", defs.join(",\n")));
            up.push(format!("SELECT diesel_manage_updated_at('{plural}');"));
        } else {
            up.push(format!("CREATE TABLE {plural} (\n{}\n);", defs.join(",\n")));
        }
        if self.rng.chance(25) {
            up.push(format!(
                "COMMENT ON TABLE {plural} IS 'One row per {}.';",
                singular.replace('_', " ")
            ));
        }
        for c in &mut cols {
            c.at_creation = true;
        }
        let used_cols = cols.iter().map(|c| c.name.clone()).collect();
        self.tables.push(Table {
            name: plural.clone(),
            singular,
            cols,
            used_cols,
            renamed: false,
            has_trigger_function: false,
            next_row: 0,
        });
        let down = if self.rng.chance(20) {
            format!("DROP TABLE IF EXISTS {plural};")
        } else {
            format!("DROP TABLE {plural};")
        };
        Step::new(
            format!("create_{plural}"),
            Change::CreateTable,
            up,
            vec![down],
        )
    }

    fn add_column(&mut self, backfill: bool) -> Option<Step> {
        let ti = self.pick_table(|_| true)?;
        let t = &self.tables[ti];
        let col = if !backfill && self.rng.chance(15) {
            let parent = self.rng.below(self.tables.len());
            let name = if parent == ti {
                "parent_id".to_owned()
            } else {
                format!("{}_id", self.tables[parent].singular)
            };
            if t.used_cols.contains(&name) {
                return None;
            }
            Col::new(&name, Ty::BigInt, Role::Ref(parent))
        } else {
            let options: Vec<_> = COLUMNS
                .iter()
                .filter(|(n, ty, d, unique)| {
                    !t.used_cols.contains(*n)
                        && (!backfill
                            || (d.is_none()
                                && !unique
                                && matches!(ty, ColTy::Text | ColTy::Varchar(_))))
                })
                .collect();
            if options.is_empty() {
                return None;
            }
            let &(name, ty, default, unique) = *self.rng.pick(&options);
            let role = if unique { Role::Unique } else { Role::Plain };
            let col = Col::new(name, ty.ty(), role);
            match default {
                Some(d) => col.with_default(d),
                None => col,
            }
        };
        let t = &mut self.tables[ti];
        t.used_cols.insert(col.name.clone());
        let add = match self.rng.below(10) {
            0 => "ADD COLUMN IF NOT EXISTS",
            1 => "ADD",
            _ => "ADD COLUMN",
        };
        let mut up = vec![format!(
            "ALTER TABLE {} {add} {};",
            t.name,
            col.definition()
        )];
        let name = if backfill {
            let expr = match col.min_len {
                Some(n) => format!("left(lower({}), {n})", t.key()),
                None => format!("lower({})", t.key()),
            };
            up.push(format!("UPDATE {} SET {} = {expr};", t.name, col.name));
            format!("backfill_{}_{}", t.name, col.name)
        } else {
            format!("add_{}_to_{}", col.name, t.name)
        };
        let drop = if self.rng.chance(15) {
            "DROP COLUMN IF EXISTS"
        } else {
            "DROP COLUMN"
        };
        let down = vec![format!("ALTER TABLE {} {drop} {};", t.name, col.name)];
        t.cols.push(col);
        let change = if backfill {
            Change::Backfill
        } else {
            Change::AddColumn
        };
        Some(Step::new(name, change, up, down))
    }

    fn add_index(&mut self, concurrently: bool) -> Option<Step> {
        let (ti, ci) = self.pick_col(|_, c| {
            !matches!(c.ty, Ty::Jsonb | Ty::Enum(_)) && !matches!(c.role, Role::Id | Role::Enum(_))
        })?;
        let t = &self.tables[ti];
        let c = &t.cols[ci];
        let unique = c.role == Role::Unique && !c.unique && self.rng.chance(50);
        let second = t
            .cols
            .iter()
            .position(|o| o.name != c.name && o.ty == Ty::Timestamptz && o.role == Role::Plain)
            .filter(|_| !unique && self.rng.chance(20));
        let partial = !c.not_null && self.rng.chance(15);
        let base = format!("{}_{}_idx", t.name, c.name);
        let (table, col) = (t.name.clone(), c.name.clone());
        let name = self.fresh(&base);
        let mut cols = col.clone();
        if let Some(s) = second {
            cols.push_str(&format!(", {}", self.tables[ti].cols[s].name));
            self.tables[ti].cols[s].deps += 1;
        }
        let t = &mut self.tables[ti];
        t.cols[ci].deps += 1;
        if unique {
            t.cols[ci].unique = true;
        }
        let kind = if unique { "UNIQUE INDEX" } else { "INDEX" };
        let conc = if concurrently { " CONCURRENTLY" } else { "" };
        let if_not = if self.rng.chance(15) {
            " IF NOT EXISTS"
        } else {
            ""
        };
        let mut up = format!("CREATE {kind}{conc}{if_not} {name} ON {table} ({cols})");
        if partial {
            up.push_str(&format!(" WHERE {col} IS NOT NULL"));
        }
        up.push(';');
        let (down, down_body) = if concurrently && self.rng.chance(60) {
            (
                format!("DROP INDEX CONCURRENTLY IF EXISTS {name};"),
                Body::Concurrently,
            )
        } else if self.rng.chance(40) {
            (format!("DROP INDEX IF EXISTS {name};"), Body::Plain)
        } else {
            (format!("DROP INDEX {name};"), Body::Plain)
        };
        let mut s = Step::new(
            format!(
                "index_{table}_on_{col}{}",
                if concurrently { "_concurrently" } else { "" }
            ),
            if concurrently {
                Change::AddIndexConcurrently
            } else {
                Change::AddIndex
            },
            vec![up],
            vec![down],
        );
        if concurrently {
            s.body = Body::Concurrently;
            if self.rng.chance(50) {
                s.header = Some("-- Built without blocking writes.\n".into());
            }
        }
        s.down_body = down_body;
        Some(s)
    }

    fn add_foreign_key(&mut self) -> Option<Step> {
        let existing = self.pick_col(|_, c| matches!(c.role, Role::Ref(_)) && !c.fk && c.deps == 0);
        let mut up = Vec::new();
        let mut down_after = Vec::new();
        let (ti, ci) = match existing {
            Some(x) => x,
            None => {
                let ti = self.rng.below(self.tables.len());
                let parent = self.rng.below(self.tables.len());
                let name = if parent == ti {
                    "parent_id".to_owned()
                } else {
                    format!("{}_id", self.tables[parent].singular)
                };
                let t = &mut self.tables[ti];
                if t.used_cols.contains(&name) {
                    return None;
                }
                t.used_cols.insert(name.clone());
                let col = Col::new(&name, Ty::BigInt, Role::Ref(parent));
                up.push(format!(
                    "ALTER TABLE {} ADD COLUMN {};",
                    t.name,
                    col.definition()
                ));
                down_after.push(format!("ALTER TABLE {} DROP COLUMN {name};", t.name));
                t.cols.push(col);
                (ti, t.cols.len() - 1)
            }
        };
        let Role::Ref(parent) = self.tables[ti].cols[ci].role else {
            unreachable!("picked a reference column")
        };
        let parent_name = self.tables[parent].name.clone();
        let (table, col) = (
            self.tables[ti].name.clone(),
            self.tables[ti].cols[ci].name.clone(),
        );
        let name = self.fresh(&format!("{table}_{col}_fkey"));
        let on_delete = *self
            .rng
            .pick(&["", " ON DELETE CASCADE", " ON DELETE SET NULL"]);
        let not_valid = self.rng.chance(30);
        up.push(format!(
            "ALTER TABLE {table}\n    ADD CONSTRAINT {name} FOREIGN KEY ({col}) REFERENCES {parent_name} (id){on_delete}{};",
            if not_valid { " NOT VALID" } else { "" }
        ));
        if not_valid {
            up.push(format!("ALTER TABLE {table} VALIDATE CONSTRAINT {name};"));
        }
        let mut down = vec![format!("ALTER TABLE {table} DROP CONSTRAINT {name};")];
        down.extend(down_after);
        let c = &mut self.tables[ti].cols[ci];
        c.fk = true;
        c.deps += 1;
        Some(Step::new(
            format!("add_{table}_{col}_foreign_key"),
            Change::AddForeignKey,
            up,
            down,
        ))
    }

    fn add_check(&mut self) -> Option<Step> {
        let (ti, ci) = self.pick_col(|_, c| {
            c.role == Role::Plain && !c.checked && matches!(c.ty, Ty::Int | Ty::Numeric | Ty::Text)
        })?;
        let (table, col) = (
            self.tables[ti].name.clone(),
            self.tables[ti].cols[ci].name.clone(),
        );
        let cond = match self.tables[ti].cols[ci].ty {
            Ty::Text => format!("char_length({col}) <= 500"),
            _ => format!("{col} >= 0"),
        };
        let name = self.fresh(&format!("{table}_{col}_check"));
        let not_valid = self.rng.chance(30);
        let mut up = vec![format!(
            "ALTER TABLE {table} ADD CONSTRAINT {name} CHECK ({cond}){};",
            if not_valid { " NOT VALID" } else { "" }
        )];
        if not_valid {
            up.push(format!("ALTER TABLE {table} VALIDATE CONSTRAINT {name};"));
        }
        let c = &mut self.tables[ti].cols[ci];
        c.checked = true;
        c.deps += 1;
        Some(Step::new(
            format!("check_{table}_{col}"),
            Change::AddCheck,
            up,
            vec![format!("ALTER TABLE {table} DROP CONSTRAINT {name};")],
        ))
    }

    fn add_unique(&mut self) -> Option<Step> {
        let (ti, ci) = self.pick_col(|_, c| c.role == Role::Unique && !c.unique)?;
        let (table, col) = (
            self.tables[ti].name.clone(),
            self.tables[ti].cols[ci].name.clone(),
        );
        let name = self.fresh(&format!("{table}_{col}_key"));
        let c = &mut self.tables[ti].cols[ci];
        c.unique = true;
        c.deps += 1;
        Some(Step::new(
            format!("unique_{table}_{col}"),
            Change::AddUnique,
            vec![format!(
                "ALTER TABLE {table} ADD CONSTRAINT {name} UNIQUE ({col});"
            )],
            vec![format!("ALTER TABLE {table} DROP CONSTRAINT {name};")],
        ))
    }

    fn create_view(&mut self) -> Option<Step> {
        let ti = self.pick_table(|t| t.cols.len() >= 3)?;
        let viewable: Vec<usize> = (0..self.tables[ti].cols.len())
            .filter(|&i| {
                let c = &self.tables[ti].cols[i];
                !matches!(c.ty, Ty::Jsonb | Ty::Enum(_)) && !matches!(c.role, Role::Enum(_))
            })
            .collect();
        let t = &self.tables[ti];
        let mut picked: Vec<usize> = viewable
            .iter()
            .copied()
            .filter(|&i| matches!(t.cols[i].role, Role::Id | Role::Key))
            .collect();
        let others: Vec<usize> = viewable
            .iter()
            .copied()
            .filter(|i| !picked.contains(i))
            .collect();
        for _ in 0..2 {
            if !others.is_empty() {
                let o = *self.rng.pick(&others);
                if !picked.contains(&o) {
                    picked.push(o);
                }
            }
        }
        picked.sort_unstable();
        let suffix = *self.rng.pick(&["summary", "overview", "listing", "export"]);
        let table = self.tables[ti].name.clone();
        let view = self.fresh(&format!("{table}_{suffix}"));
        let t = &mut self.tables[ti];
        let cols: Vec<String> = picked.iter().map(|&i| t.cols[i].name.clone()).collect();
        for &i in &picked {
            t.cols[i].deps += 1;
        }
        let create = if self.rng.chance(30) {
            "CREATE OR REPLACE VIEW"
        } else {
            "CREATE VIEW"
        };
        let filter = if self.rng.chance(40) {
            format!("\nWHERE {} IS NOT NULL", t.key())
        } else {
            String::new()
        };
        Some(Step::new(
            format!("create_{view}_view"),
            Change::CreateView,
            vec![format!(
                "{create} {view} AS\nSELECT {}\nFROM {table}{filter};",
                cols.join(", ")
            )],
            vec![format!("DROP VIEW {view};")],
        ))
    }

    fn alter_default(&mut self) -> Option<Step> {
        let (ti, ci) = self.pick_col(|_, c| {
            c.role == Role::Plain
                && match c.ty {
                    Ty::Int | Ty::Bool | Ty::Numeric | Ty::Text | Ty::Varchar(_) => true,
                    Ty::Timestamptz => !c.not_null,
                    _ => false,
                }
        })?;
        let c = &self.tables[ti].cols[ci];
        let candidates: Vec<String> = match &c.ty {
            Ty::Int => ["1", "5", "10", "100"].map(String::from).to_vec(),
            Ty::Bool => ["true", "false"].map(String::from).to_vec(),
            Ty::Numeric => ["0", "1.00", "9.99"].map(String::from).to_vec(),
            Ty::Timestamptz => vec!["now()".into()],
            _ => ["en", "de", "n/a", "none", "draft", "unknown"]
                .iter()
                .filter(|v| c.min_len.is_none_or(|n| v.len() <= n as usize))
                .map(|v| format!("'{v}'"))
                .collect(),
        };
        let candidates: Vec<String> = candidates
            .into_iter()
            .filter(|v| Some(v) != c.default.as_ref())
            .collect();
        let (table, col) = (self.tables[ti].name.clone(), c.name.clone());
        let old = c.default.clone();
        let set = |v: &Option<String>| match v {
            Some(v) => format!("ALTER TABLE {table} ALTER COLUMN {col} SET DEFAULT {v};"),
            None => format!("ALTER TABLE {table} ALTER COLUMN {col} DROP DEFAULT;"),
        };
        // A nullable column with a default may lose it; a NOT NULL one always keeps one.
        let new = if !c.not_null && old.is_some() && self.rng.chance(35) {
            None
        } else if candidates.is_empty() {
            return None;
        } else {
            Some(self.rng.pick(&candidates).clone())
        };
        let (up, down) = (set(&new), set(&old));
        self.tables[ti].cols[ci].default = new;
        Some(Step::new(
            format!("change_default_of_{table}_{col}"),
            Change::AlterDefault,
            vec![up],
            vec![down],
        ))
    }

    fn alter_type(&mut self) -> Option<Step> {
        let (ti, ci) = self.pick_col(|_, c| {
            c.deps == 0
                && matches!(c.role, Role::Plain | Role::Unique)
                && matches!(c.ty, Ty::Int | Ty::Varchar(_))
        })?;
        let c = &self.tables[ti].cols[ci];
        let (new, old) = match c.ty {
            Ty::Varchar(n) => (Ty::Varchar(n.max(8) * 2 + 15), c.ty.clone()),
            _ => (Ty::BigInt, Ty::Int),
        };
        let (table, col) = (self.tables[ti].name.clone(), c.name.clone());
        let verb = if self.rng.chance(25) {
            "SET DATA TYPE"
        } else {
            "TYPE"
        };
        let up = format!(
            "ALTER TABLE {table} ALTER COLUMN {col} {verb} {};",
            new.sql()
        );
        let down = format!("ALTER TABLE {table} ALTER COLUMN {col} TYPE {};", old.sql());
        let c = &mut self.tables[ti].cols[ci];
        c.ty = new;
        c.retyped = true;
        Some(Step::new(
            format!("widen_{table}_{col}"),
            Change::AlterType,
            vec![up],
            vec![down],
        ))
    }

    fn drop_column(&mut self) -> Option<Step> {
        let (ti, ci) = self.pick_col(|_, c| {
            c.deps == 0 && !c.fk && matches!(c.role, Role::Plain | Role::Unique | Role::Ref(_))
        })?;
        let t = &mut self.tables[ti];
        let c = t.cols.remove(ci);
        let table = t.name.clone();
        let up = if self.rng.chance(20) {
            format!("ALTER TABLE {table} DROP COLUMN IF EXISTS {};", c.name)
        } else {
            format!("ALTER TABLE {table} DROP COLUMN {};", c.name)
        };
        let mut down = vec![format!(
            "ALTER TABLE {table} ADD COLUMN {};",
            c.definition()
        )];
        if let Some(comment) = &c.comment {
            down.push(format!(
                "COMMENT ON COLUMN {table}.{} IS '{comment}';",
                c.name
            ));
        }
        Some(Step::new(
            format!("drop_{table}_{}", c.name),
            Change::DropColumn,
            vec![up],
            down,
        ))
    }

    fn insert_rows(&mut self) -> Option<Step> {
        let ti = self.pick_table(|_| true)?;
        let n = 2 + self.rng.below(4);
        let extra = {
            let t = &self.tables[ti];
            let ints: Vec<usize> = (0..t.cols.len())
                .filter(|&i| t.cols[i].role == Role::Plain && t.cols[i].ty == Ty::Int)
                .collect();
            (!ints.is_empty() && self.rng.chance(40)).then(|| *self.rng.pick(&ints))
        };
        let t = &mut self.tables[ti];
        let key = t.key().to_owned();
        let mut values = Vec::new();
        let mut keys = Vec::new();
        for _ in 0..n {
            t.next_row += 1;
            let k = format!("'{}_{}'", t.singular, t.next_row);
            keys.push(k.clone());
            values.push(match extra {
                Some(_) => format!("    ({k}, {})", t.next_row * 3),
                None => format!("    ({k})"),
            });
        }
        let cols = match extra {
            Some(i) => format!("{key}, {}", t.cols[i].name),
            None => key.clone(),
        };
        let table = t.name.clone();
        Some(Step::new(
            format!("seed_{table}"),
            Change::InsertRows,
            vec![format!(
                "INSERT INTO {table} ({cols}) VALUES\n{};",
                values.join(",\n")
            )],
            vec![format!(
                "DELETE FROM {table} WHERE {key} IN ({});",
                keys.join(", ")
            )],
        ))
    }

    fn update_rows(&mut self) -> Option<Step> {
        let (ti, ci) = self.pick_col(|_, c| c.writable())?;
        let t = &self.tables[ti];
        let c = &t.cols[ci];
        let key = t.key();
        let value = match &c.ty {
            Ty::Text => format!("lower({key})"),
            Ty::Varchar(_) => format!("left(lower({key}), {})", c.min_len.unwrap_or(1)),
            Ty::Int => format!("{}", 1 + self.rng.below(99)),
            Ty::Bool => "true".into(),
            Ty::Numeric => "0".into(),
            _ => "now()".into(),
        };
        let filter = if c.not_null {
            format!("{key} LIKE '{}%'", t.singular)
        } else {
            format!("{} IS NULL", c.name)
        };
        let (table, col) = (t.name.clone(), c.name.clone());
        let mut s = Step::new(
            format!("fix_{table}_{col}"),
            Change::UpdateRows,
            vec![format!(
                "UPDATE {table}\nSET {col} = {value}\nWHERE {filter};"
            )],
            Vec::new(),
        );
        s.empty_down = Some(if self.rng.chance(50) {
            "-- Data fix: there is nothing to undo.\n"
        } else {
            "-- irreversible data migration\n"
        });
        Some(s)
    }

    fn rename_column(&mut self) -> Option<Step> {
        let (ti, ci) = self.pick_col(|t, c| {
            !matches!(c.role, Role::Id | Role::Pinned)
                && c.name.len() <= 20
                && ["display", "internal", "primary", "legacy"]
                    .iter()
                    .any(|p| !t.used_cols.contains(&format!("{p}_{}", c.name)))
        })?;
        let t = &mut self.tables[ti];
        let old = t.cols[ci].name.clone();
        let new = ["display", "internal", "primary", "legacy"]
            .iter()
            .map(|p| format!("{p}_{old}"))
            .find(|n| !t.used_cols.contains(n))
            .expect("checked by pick_col");
        t.used_cols.insert(new.clone());
        t.cols[ci].name = new.clone();
        let table = t.name.clone();
        let word = if self.rng.chance(20) { "" } else { " COLUMN" };
        Some(Step::new(
            format!("rename_{table}_{old}_to_{new}"),
            Change::RenameColumn,
            vec![format!("ALTER TABLE {table} RENAME{word} {old} TO {new};")],
            vec![format!("ALTER TABLE {table} RENAME{word} {new} TO {old};")],
        ))
    }

    fn rename_table(&mut self) -> Option<Step> {
        let prefixes = ["app", "core", "crm", "billing"];
        let ti = self.pick_table(|t| !t.renamed && t.name.len() <= 18)?;
        let old = self.tables[ti].name.clone();
        let new = prefixes
            .iter()
            .map(|p| format!("{p}_{old}"))
            .find(|n| !self.names.contains(n))?;
        self.names.insert(new.clone());
        let t = &mut self.tables[ti];
        t.name = new.clone();
        t.renamed = true;
        Some(Step::new(
            format!("rename_{old}_to_{new}"),
            Change::RenameTable,
            vec![format!("ALTER TABLE {old} RENAME TO {new};")],
            vec![format!("ALTER TABLE {new} RENAME TO {old};")],
        ))
    }

    fn create_enum(&mut self) -> Option<Step> {
        let ti = self.pick_table(|t| ENUMS.iter().any(|(c, _, _)| !t.used_cols.contains(*c)))?;
        let options: Vec<_> = ENUMS
            .iter()
            .filter(|(c, _, _)| !self.tables[ti].used_cols.contains(*c))
            .collect();
        let &(col, labels, spare) = *self.rng.pick(&options);
        let singular = self.tables[ti].singular.clone();
        let ty = self.fresh(&format!("{singular}_{col}"));
        let e = self.enums.len();
        self.enums.push(EnumType {
            name: ty.clone(),
            labels: labels.iter().map(|l| (*l).to_owned()).collect(),
            table: ti,
            spare: spare.to_vec(),
        });
        let t = &mut self.tables[ti];
        t.used_cols.insert(col.to_owned());
        t.cols
            .push(Col::new(col, Ty::Enum(ty.clone()), Role::Enum(e)));
        let quoted: Vec<String> = labels.iter().map(|l| format!("'{l}'")).collect();
        let table = t.name.clone();
        let create = format!("CREATE TYPE {ty} AS ENUM ({});", quoted.join(", "));
        // Teams that rerun scripts by hand guard the type with a DO block.
        let (create, drop) = if e == 0 || self.rng.chance(35) {
            (
                format!(
                    "DO $$\nBEGIN\n    IF NOT EXISTS (SELECT 1 FROM pg_type WHERE typname = '{ty}') THEN\n        {create}\n    END IF;\nEND\n$$;"
                ),
                format!("DROP TYPE IF EXISTS {ty};"),
            )
        } else {
            (create, format!("DROP TYPE {ty};"))
        };
        Some(Step::new(
            format!("add_{col}_to_{table}"),
            Change::CreateEnum,
            vec![
                create,
                format!("ALTER TABLE {table} ADD COLUMN {col} {ty};"),
            ],
            vec![format!("ALTER TABLE {table} DROP COLUMN {col};"), drop],
        ))
    }

    fn add_enum_value(&mut self) -> Option<Step> {
        let candidates: Vec<usize> = (0..self.enums.len())
            .filter(|&e| !self.enums[e].spare.is_empty())
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let e = *self.rng.pick(&candidates);
        let t = &self.tables[self.enums[e].table];
        let col = t
            .cols
            .iter()
            .find(|c| c.role == Role::Enum(e))
            .expect("enum columns are never dropped")
            .name
            .clone();
        let table = t.name.clone();
        let en = &mut self.enums[e];
        let value = en.spare.remove(0);
        let old = en.labels.clone();
        let ty = en.name.clone();
        let (clause, at) = match self.rng.below(5) {
            0 => (format!("BEFORE '{}'", old[1]), 1),
            1 => (format!("AFTER '{}'", old[0]), 1),
            _ => (String::new(), old.len()),
        };
        en.labels.insert(at, value.to_owned());
        let if_not = if self.rng.chance(30) {
            "IF NOT EXISTS "
        } else {
            ""
        };
        let up = if clause.is_empty() {
            format!("ALTER TYPE {ty} ADD VALUE {if_not}'{value}';")
        } else {
            format!("ALTER TYPE {ty} ADD VALUE {if_not}'{value}' {clause};")
        };
        let quoted: Vec<String> = old.iter().map(|l| format!("'{l}'")).collect();
        let old_ty = format!("{ty}_old");
        let down = vec![
            format!("ALTER TYPE {ty} RENAME TO {old_ty};"),
            format!("CREATE TYPE {ty} AS ENUM ({});", quoted.join(", ")),
            format!("ALTER TABLE {table} ALTER COLUMN {col} TYPE {ty} USING {col}::text::{ty};"),
            format!("DROP TYPE {old_ty};"),
        ];
        Some(Step::new(
            format!("add_{value}_to_{ty}"),
            Change::AddEnumValue,
            vec![up],
            down,
        ))
    }

    fn trigger_function(&mut self) -> Option<Step> {
        let ti = self.pick_table(|t| {
            !t.has_trigger_function
                && ["touched_at", "modified_at", "changed_at"]
                    .iter()
                    .any(|c| !t.used_cols.contains(*c))
        })?;
        let col = *["touched_at", "modified_at", "changed_at"]
            .iter()
            .find(|c| !self.tables[ti].used_cols.contains(**c))
            .expect("checked");
        let table = self.tables[ti].name.clone();
        let f = self.fresh(&format!("{table}_touch"));
        let tag = *self.rng.pick(&["$$", "$fn$", "$body$"]);
        let create = if self.rng.chance(50) {
            "CREATE OR REPLACE FUNCTION"
        } else {
            "CREATE FUNCTION"
        };
        let t = &mut self.tables[ti];
        t.has_trigger_function = true;
        t.used_cols.insert(col.to_owned());
        t.cols.push(Col::new(col, Ty::Timestamptz, Role::Pinned));
        Some(Step::new(
            format!("touch_{table}_{col}"),
            Change::TriggerFunction,
            vec![
                format!("ALTER TABLE {table} ADD COLUMN {col} timestamptz;"),
                format!(
                    "{create} {f}() RETURNS trigger\nLANGUAGE plpgsql\nAS {tag}\nBEGIN\n    NEW.{col} := now();\n    RETURN NEW;\nEND;\n{tag};"
                ),
                format!(
                    "CREATE TRIGGER {f}\n    BEFORE UPDATE ON {table}\n    FOR EACH ROW EXECUTE FUNCTION {f}();"
                ),
            ],
            vec![
                format!("DROP TRIGGER {f} ON {table};"),
                format!("DROP FUNCTION {f}();"),
                format!("ALTER TABLE {table} DROP COLUMN {col};"),
            ],
        ))
    }

    fn comment(&mut self) -> Option<Step> {
        let (ti, ci) = self.pick_col(|_, c| c.role != Role::Id)?;
        let t = &mut self.tables[ti];
        let c = &mut t.cols[ci];
        // The first comment, and a third of the others, in German, with a dash.
        let first = !self.seen.contains(&Change::Comment);
        let (what, of) = (c.name.replace('_', " "), t.singular.replace('_', " "));
        let text = if first || self.rng.below(3) == 0 {
            format!("{what} — of the {of} (größer als null)")
        } else {
            format!("{what} of the {of}")
        };
        let old = c.comment.replace(text.clone());
        let table = t.name.clone();
        let on = format!("COMMENT ON COLUMN {table}.{}", c.name);
        let down = match old {
            Some(o) => format!("{on} IS '{o}';"),
            None => format!("{on} IS NULL;"),
        };
        Some(Step::new(
            format!("document_{table}_{}", c.name),
            Change::Comment,
            vec![format!("{on} IS '{text}';")],
            vec![down],
        ))
    }

    /// Flyway's repeatable migrations: three or four files of views over the tables as the
    /// history leaves them, by their final names.
    fn repeatables(&mut self) -> Vec<(String, String)> {
        let n = 3 + self.rng.below(2);
        let mut out: Vec<(String, String)> = Vec::new();
        let mut used_tables = HashSet::new();
        for k in 0..n {
            let free: Vec<usize> = (0..self.tables.len())
                .filter(|t| !used_tables.contains(t))
                .collect();
            if free.is_empty() {
                break;
            }
            let ti = *self.rng.pick(&free);
            used_tables.insert(ti);
            let t = self.tables[ti].clone();
            let cols = self.view_columns(&t);
            let (description, mut text) = match k % 3 {
                0 => {
                    let v = self.fresh(&format!("report_{}", t.name));
                    (
                        format!("report_{}", t.name),
                        format!(
                            "-- Reporting view, recreated whenever this file changes.\nCREATE OR REPLACE VIEW {v} AS\nSELECT {}\nFROM {};\n",
                            cols.join(", "),
                            t.name
                        ),
                    )
                }
                1 => {
                    // A join through a reference to another table, if it has one.
                    let link = t.cols.iter().find_map(|c| match c.role {
                        Role::Ref(p) if p != ti => Some((c.name.clone(), p)),
                        _ => None,
                    });
                    match link {
                        Some((fk, p)) => {
                            let parent = self.tables[p].clone();
                            let v = self.fresh(&format!("{}_with_{}", t.name, parent.singular));
                            let mine: Vec<String> = cols.iter().map(|c| format!("t.{c}")).collect();
                            let key = parent.key();
                            (
                                format!("{}_with_{}", t.name, parent.singular),
                                format!(
                                    "CREATE OR REPLACE VIEW {v} AS\nSELECT {}, p.{key} AS {}_{key}\nFROM {} t\nLEFT JOIN {} p ON p.id = t.{fk};\n",
                                    mine.join(", "),
                                    parent.singular,
                                    t.name,
                                    parent.name
                                ),
                            )
                        }
                        None => {
                            let v = self.fresh(&format!("{}_names", t.name));
                            (
                                format!("{}_names", t.name),
                                format!(
                                    "CREATE OR REPLACE VIEW {v} AS\nSELECT id, {}\nFROM {}\nORDER BY {};\n",
                                    t.key(),
                                    t.name,
                                    t.key()
                                ),
                            )
                        }
                    }
                }
                _ => {
                    let v = self.fresh(&format!("recent_{}", t.name));
                    let filter = match t.cols.iter().find(|c| c.ty == Ty::Timestamptz) {
                        Some(c) => format!("\nWHERE {} > now() - interval '30 days'", c.name),
                        None => String::new(),
                    };
                    (
                        format!("recent_{}", t.name),
                        format!(
                            "CREATE OR REPLACE VIEW {v} AS\nSELECT {}\nFROM {}{filter};\n",
                            cols.join(", "),
                            t.name
                        ),
                    )
                }
            };
            // A second view in the same file, now and then.
            if k == 0 && self.rng.chance(60) {
                let other: Vec<usize> = (0..self.tables.len())
                    .filter(|o| !used_tables.contains(o))
                    .collect();
                if !other.is_empty() {
                    let oi = *self.rng.pick(&other);
                    used_tables.insert(oi);
                    let o = self.tables[oi].clone();
                    let v = self.fresh(&format!("report_{}", o.name));
                    text.push_str(&format!(
                        "\nCREATE OR REPLACE VIEW {v} AS\nSELECT {}\nFROM {};\n",
                        self.view_columns(&o).join(", "),
                        o.name
                    ));
                }
            }
            out.push((format!("R__{description}.sql"), text));
        }
        out.sort();
        out
    }

    /// The columns a repeatable view over `t` shows: `id`, its key, and up to two others.
    fn view_columns(&mut self, t: &Table) -> Vec<String> {
        let mut cols: Vec<String> = t
            .cols
            .iter()
            .filter(|c| matches!(c.role, Role::Id | Role::Key))
            .map(|c| c.name.clone())
            .collect();
        let others: Vec<&Col> = t
            .cols
            .iter()
            .filter(|c| !matches!(c.role, Role::Id | Role::Key))
            .collect();
        for _ in 0..2 {
            if !others.is_empty() {
                let c = &self.rng.pick(&others).name;
                if !cols.contains(c) {
                    cols.push(c.clone());
                }
            }
        }
        cols
    }

    /// The files, as the layout names them.
    fn write(self, repeatables: Vec<(String, String)>) -> History {
        let mut rng = self.rng.clone();
        let mut files = BTreeMap::new();
        let mut migrations = Vec::new();
        let mut flyway = FlywayVersions::default();
        let mut clock = DieselClock::default();
        let count = self.steps.len();
        for (i, s) in self.steps.iter().enumerate() {
            let own = own_pair(&mut rng);
            let up = match s.header.as_deref() {
                Some(h) if s.change == Change::DieselSetup => h.to_owned(),
                h => render(h, &s.up, (s.body == Body::OwnTransaction).then_some(own)),
            };
            let down = match s.empty_down {
                Some(text) if s.down.is_empty() => text.to_owned(),
                _ => render(None, &s.down, s.own_down.then_some(own)),
            };
            let down_body = if s.own_down && !s.down.is_empty() {
                Body::OwnTransaction
            } else {
                s.down_body
            };
            let (version, label, up_path, down_path) = match self.layout {
                Layout::Flyway => {
                    let parts = flyway.next(&mut rng);
                    let sep = if rng.chance(50) { "_" } else { "." };
                    let written = parts
                        .iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(sep);
                    let version = parts
                        .iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(".");
                    let label = format!("V{written}__{}.sql", s.name);
                    let down = format!("U{written}__{}.sql", s.name);
                    (version, label.clone(), label, down)
                }
                Layout::GolangMigrate => {
                    let n = i + 1;
                    (
                        n.to_string(),
                        format!("{n:06}_{}.up.sql", s.name),
                        format!("{n:06}_{}.up.sql", s.name),
                        format!("{n:06}_{}.down.sql", s.name),
                    )
                }
                Layout::Diesel => {
                    let stamp = if s.change == Change::DieselSetup {
                        "00000000000000".to_owned()
                    } else {
                        // The CLI upgraded a bit past half-way; someone kept the old one.
                        let newer = i * 100 >= count * 55 && !rng.chance(10);
                        clock.next(&mut rng, newer)
                    };
                    let label = format!("{stamp}_{}", s.name);
                    if s.no_transaction_metadata {
                        files.insert(
                            format!("{label}/metadata.toml"),
                            "run_in_transaction = false\n".to_owned(),
                        );
                    }
                    (
                        stamp.replace('-', ""),
                        label.clone(),
                        format!("{label}/up.sql"),
                        format!("{label}/down.sql"),
                    )
                }
            };
            let (up, down) = if s.change == Change::DieselSetup {
                (up, down)
            } else {
                (as_edited(&mut rng, up), as_edited(&mut rng, down))
            };
            files.insert(up_path.clone(), up);
            files.insert(down_path.clone(), down);
            migrations.push(HistoryMigration {
                version,
                name: s.name.clone(),
                label,
                up: up_path,
                down: down_path,
                body: s.body,
                down_body,
                no_transaction_metadata: s.no_transaction_metadata,
                change: s.change,
            });
        }
        let mut names = Vec::new();
        for (name, text) in repeatables {
            names.push(name.clone());
            files.insert(name, text);
        }
        History {
            layout: self.layout,
            files,
            migrations,
            repeatables: names,
        }
    }
}

/// A file as people leave it: now and then without its last `;` (the tools send the rest of
/// the file at its end), without a final newline, or with Windows line endings.
fn as_edited(rng: &mut Rng, mut text: String) -> String {
    if rng.chance(5) && text.ends_with(";\n") && !text.trim_end().ends_with("$$;") {
        text.truncate(text.len() - 2);
        text.push('\n');
    }
    if rng.chance(8) {
        text.truncate(text.trim_end_matches('\n').len());
    }
    if rng.chance(4) {
        text = text.replace('\n', "\r\n");
    }
    text
}

fn own_pair(rng: &mut Rng) -> (&'static str, &'static str) {
    match rng.below(10) {
        0 => ("begin;", "commit;"),
        1 => ("START TRANSACTION;", "COMMIT;"),
        _ => ("BEGIN;", "COMMIT;"),
    }
}

/// A file: its heading comment, its statements, in its own transaction if `own` says how.
fn render(header: Option<&str>, stmts: &[String], own: Option<(&str, &str)>) -> String {
    let mut s = String::new();
    if let Some(h) = header {
        s.push_str(h);
    }
    if let Some((begin, _)) = own {
        s.push_str(begin);
        s.push_str("\n\n");
    }
    s.push_str(&stmts.join("\n\n"));
    s.push('\n');
    if let Some((_, commit)) = own {
        s.push('\n');
        s.push_str(commit);
        s.push('\n');
    }
    s
}

/// Flyway versions as a team writes them: `1`, then `1.1`, `1.1.1`… `1.2.9`, `1.2.10`…, a new
/// major now and then (`2`, `2.1`, …). No version ends in a zero part, so Flyway (which
/// ignores trailing zeros) and the runner order them alike.
#[derive(Debug, Default)]
struct FlywayVersions {
    major: u64,
    minor: u64,
    patch: u64,
    limit: u64,
}

impl FlywayVersions {
    fn next(&mut self, rng: &mut Rng) -> Vec<u64> {
        if self.major == 0 {
            self.major = 1;
            return vec![1];
        }
        if self.minor == 0 || self.patch >= self.limit {
            if self.minor > 0 && self.major == 1 && self.minor < 3 {
                self.minor += 1;
            } else if self.minor > 0 && rng.chance(10) {
                self.major += 1;
                self.minor = 0;
                self.patch = 0;
                return vec![self.major];
            } else {
                self.minor += 1;
            }
            self.patch = 0;
            // 1.2 runs to 1.2.12: V1_2_10 comes after V1_2_9.
            self.limit = if (self.major, self.minor) == (1, 2) {
                12
            } else {
                3 + rng.below(12) as u64
            };
            return vec![self.major, self.minor];
        }
        self.patch += 1;
        vec![self.major, self.minor, self.patch]
    }
}

/// diesel's folder timestamps: strictly increasing, minutes to days apart.
#[derive(Debug)]
struct DieselClock {
    secs: i64,
}

impl Default for DieselClock {
    fn default() -> Self {
        // 2021-01-04 09:12:00 UTC.
        DieselClock {
            secs: 18_631 * 86_400 + 9 * 3_600 + 12 * 60,
        }
    }
}

impl DieselClock {
    /// The next stamp: `2021-01-04-091200`, or `2021-01-04-091200-0000` (`newer`).
    fn next(&mut self, rng: &mut Rng, newer: bool) -> String {
        self.secs += 300 + rng.below(4 * 86_400) as i64;
        let days = self.secs.div_euclid(86_400);
        let rem = self.secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        let stamp = format!(
            "{y:04}-{m:02}-{d:02}-{:02}{:02}{:02}",
            rem / 3_600,
            rem % 3_600 / 60,
            rem % 60
        );
        if newer {
            format!("{stamp}-0000")
        } else {
            stamp
        }
    }
}

/// The civil date of a day number (days since 1970-01-01); Howard Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests;
