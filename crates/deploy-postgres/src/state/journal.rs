//! A run's journal in the `journal` table, each append fenced by the lease's token.

use std::sync::Arc;

use async_trait::async_trait;
use deploy_core::DeployError;
use deploy_core::journal::Record;
use deploy_core::state::JournalWriter;
use tokio_postgres::types::{ToSql, Type};

use super::lease::LeaseState;
use super::{Inner, pg_text};

/// The journal of one run, open for appending under a lease.
///
/// Each append is one statement that inserts only while the lease row still names this
/// writer's token. It goes over the lease's own session when this store value took the lease
/// (and that session is open), else over the store's shared connection.
pub(in crate::state) struct PgJournal {
    inner: Arc<Inner>,
    lease: Option<Arc<LeaseState>>,
    environment: String,
    run_id: String,
    token: u64,
    location: String,
    /// Why an earlier append failed: every later one fails too.
    broken: Option<String>,
}

impl std::fmt::Debug for PgJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgJournal")
            .field("location", &self.location)
            .field("token", &self.token)
            .field("broken", &self.broken)
            .finish()
    }
}

impl PgJournal {
    pub(in crate::state) fn new(
        inner: Arc<Inner>,
        lease: Option<Arc<LeaseState>>,
        environment: &str,
        run_id: &str,
        token: u64,
        location: String,
    ) -> Self {
        Self {
            inner,
            lease,
            environment: environment.to_owned(),
            run_id: run_id.to_owned(),
            token,
            location,
            broken: None,
        }
    }

    fn lost(&self, cause: String) -> DeployError {
        if let Some(l) = &self.lease {
            l.set_lost(cause.clone());
        }
        DeployError::LeaseLost {
            environment: self.environment.clone(),
            run_id: self.run_id.clone(),
            cause,
        }
    }
}

#[async_trait]
impl JournalWriter for PgJournal {
    /// Append `record`: committed (durable as the server's `synchronous_commit` makes it) before
    /// this returns, or refused with [`DeployError::LeaseLost`] once another holder has the
    /// lock.
    async fn append(&mut self, record: &Record) -> Result<(), DeployError> {
        if let Some(first) = &self.broken {
            return Err(self.inner.err(
                format!(
                    "append to the journal of run {}: the journal is broken since an earlier \
                     write failed ({first})",
                    self.run_id
                ),
                None,
            ));
        }
        if let Some(why) = self.lease.as_ref().and_then(|l| l.lost()) {
            return Err(self.lost(why));
        }
        let value = self.inner.json("the record", record)?;
        let client = match self.lease.as_ref().and_then(|l| l.client()) {
            Some(c) => c,
            None => self.inner.shared().await?,
        };
        let token = self.token as i64;
        // A server or network that stops answering must not hold the run forever: after a
        // whole ttl the lease may be someone else's anyway.
        let limit = self.inner.ttl;
        let written = tokio::time::timeout(
            limit,
            client.execute_typed(
                &self.inner.sql.append,
                &[
                    (&self.environment as &(dyn ToSql + Sync), Type::TEXT),
                    (&self.run_id, Type::TEXT),
                    (&token, Type::INT8),
                    (&value, Type::JSONB),
                ],
            ),
        )
        .await;
        let fenced = || async {
            tokio::time::timeout(limit, self.inner.why_fenced(&self.environment, self.token))
                .await
                .ok()
                .flatten()
        };
        match written {
            Ok(Ok(1)) => Ok(()),
            Ok(Ok(_)) => {
                let why = fenced()
                    .await
                    .unwrap_or_else(|| "the lock no longer names this run's lease".to_owned());
                Err(self.lost(why))
            }
            Ok(Err(e)) => {
                // A session ended by a taker fails here: say so when that is what happened.
                if let Some(why) = fenced().await {
                    return Err(self.lost(why));
                }
                self.broken = Some(pg_text(&e));
                Err(self
                    .inner
                    .pg_err(&format!("append to the journal of run {}", self.run_id), e))
            }
            Err(_) => {
                let cause = format!(
                    "no answer within {} ms: the record may or may not be written",
                    limit.as_millis()
                );
                self.broken = Some(cause.clone());
                Err(self.inner.err(
                    format!("append to the journal of run {}: {cause}", self.run_id),
                    None,
                ))
            }
        }
    }

    fn location(&self) -> String {
        self.location.clone()
    }
}
