//! The store's tables, created and upgraded by the store itself.
//!
//! `<schema>.schema_migrations` holds one row per version applied. Every upgrade runs in one
//! transaction under a transaction-level advisory lock, so two processes starting at once
//! neither race on `CREATE` nor apply a version twice; a database upgraded by a newer release
//! than this one is refused rather than misread.

/// The versions, in order: version `i + 1` is `MIGRATIONS[i]`, with `{s}` the quoted schema.
const MIGRATIONS: &[&str] = &[
    // 1: the lock, runs and their journals, control requests, reports, history.
    r#"
CREATE SEQUENCE {s}.token_seq AS bigint;
CREATE TABLE {s}.locks (
    environment text PRIMARY KEY,
    token bigint NOT NULL,
    holder jsonb NOT NULL,
    backend_pid integer,
    acquired_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE TABLE {s}.runs (
    seq bigserial PRIMARY KEY,
    environment text NOT NULL,
    run_id text NOT NULL,
    token bigint NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (environment, run_id)
);
CREATE TABLE {s}.journal (
    seq bigserial PRIMARY KEY,
    environment text NOT NULL,
    run_id text NOT NULL,
    token bigint NOT NULL,
    record jsonb NOT NULL,
    written_at timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (environment, run_id) REFERENCES {s}.runs (environment, run_id)
);
CREATE INDEX journal_run ON {s}.journal (environment, run_id, seq);
CREATE TABLE {s}.requests (
    environment text PRIMARY KEY,
    request jsonb NOT NULL,
    written_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE {s}.reports (
    environment text NOT NULL,
    run_id text NOT NULL,
    report jsonb NOT NULL,
    saved_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (environment, run_id)
);
CREATE TABLE {s}.history (
    seq bigserial PRIMARY KEY,
    environment text NOT NULL,
    run_id text NOT NULL,
    entry jsonb NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX history_environment ON {s}.history (environment, seq);
"#,
];

/// The newest version this release knows.
pub(super) const VERSION: i32 = MIGRATIONS.len() as i32;

/// A schema name as the store accepts it: a plain lower-case identifier, so that it needs no
/// quoting rules beyond double quotes and is shown as written.
pub(super) fn check_name(schema: &str) -> Result<(), String> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && schema
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !schema.starts_with("pg_");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "schema name {schema:?} is not a lower-case identifier (a-z, 0-9, _; at most 63 \
             bytes; not starting with a digit or pg_)"
        ))
    }
}

/// Bring `schema` up to [`VERSION`] over `client`. Returns the version found before.
pub(super) async fn upgrade(
    client: &mut tokio_postgres::Client,
    schema: &str,
    lock_key: i64,
) -> Result<i32, String> {
    let s = crate::tools::ident(schema);
    // Up to date already: no DDL at all, so that a role without CREATE on the database works
    // once someone allowed to created the tables (`CREATE SCHEMA IF NOT EXISTS` checks that
    // privilege even when the schema exists).
    let exists: Option<String> = client
        .query_one(
            "SELECT to_regclass($1)::text",
            &[&format!("{s}.schema_migrations")],
        )
        .await
        .map_err(|e| {
            format!(
                "look for {schema}.schema_migrations: {}",
                super::pg_text(&e)
            )
        })?
        .get(0);
    if exists.is_some() {
        let found: i32 = client
            .query_one(
                &format!("SELECT coalesce(max(version), 0) FROM {s}.schema_migrations"),
                &[],
            )
            .await
            .map_err(|e| format!("read {schema}.schema_migrations: {}", super::pg_text(&e)))?
            .get(0);
        if found >= VERSION {
            return newer(schema, found).map(|()| found);
        }
    }
    let tx = client
        .transaction()
        .await
        .map_err(|e| format!("begin: {}", super::pg_text(&e)))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock_key])
        .await
        .map_err(|e| format!("take the schema's advisory lock: {}", super::pg_text(&e)))?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {s};
         CREATE TABLE IF NOT EXISTS {s}.schema_migrations (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         );"
    ))
    .await
    .map_err(|e| format!("create schema {schema}: {}", super::pg_text(&e)))?;
    let found: i32 = tx
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM {s}.schema_migrations"),
            &[],
        )
        .await
        .map_err(|e| format!("read {schema}.schema_migrations: {}", super::pg_text(&e)))?
        .get(0);
    newer(schema, found)?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = i as i32 + 1;
        tx.batch_execute(&sql.replace("{s}", &s))
            .await
            .map_err(|e| {
                format!(
                    "upgrade schema {schema} to version {version}: {}",
                    super::pg_text(&e)
                )
            })?;
        tx.execute(
            &format!("INSERT INTO {s}.schema_migrations (version) VALUES ($1)"),
            &[&version],
        )
        .await
        .map_err(|e| {
            format!(
                "record version {version} of schema {schema}: {}",
                super::pg_text(&e)
            )
        })?;
    }
    tx.commit().await.map_err(|e| {
        format!(
            "commit the upgrade of schema {schema}: {}",
            super::pg_text(&e)
        )
    })?;
    Ok(found)
}

/// `Err` when `found` is newer than this release knows.
fn newer(schema: &str, found: i32) -> Result<(), String> {
    if found > VERSION {
        return Err(format!(
            "schema {schema} is at version {found}, newer than this release knows ({VERSION}): \
             upgrade deploy on this machine"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_identifiers() {
        for ok in ["deploy", "deploy_state", "_x1"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Deploy",
            "1x",
            "a-b",
            "a\"b",
            "pg_state",
            &"x".repeat(64),
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
