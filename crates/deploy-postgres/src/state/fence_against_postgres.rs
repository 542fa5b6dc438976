//! The fence's statements against a real server, in the interleaving that matters: the old
//! holder's append runs while the takeover's update of the lease row is not yet committed. With
//! `FOR SHARE` in the fence the append waits for the takeover and then inserts nothing; without
//! it, it would insert under the old token and commit after the takeover did.

use std::time::Duration;

use deploy_core::journal::LockInfo;
use tokio_postgres::types::{ToSql, Type};

use super::PgStateStore;
use crate::testing::PgServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_racing_a_takeover_waits_for_it_and_then_writes_nothing() {
    let server = PgServer::start().await.unwrap();
    let config = server.create_database().await.unwrap();
    let store = PgStateStore::new(config.clone()).unwrap();
    let inner = store.inner.clone();
    let lease = deploy_core::state::StateStore::lock(
        &store,
        "prod",
        &LockInfo::this_process("run-a"),
        deploy_core::state::LockOptions::default(),
    )
    .await
    .unwrap();
    let old = lease.token() as i64;
    deploy_core::state::StateStore::create_journal(&store, lease.as_ref(), "prod", "run-a")
        .await
        .unwrap();

    // The takeover, not yet committed: the lease row updated to a new token.
    let (mut taker, _t) = inner.connector.connect("test-taker").await.unwrap();
    let tx = taker.transaction().await.unwrap();
    let holder = serde_json::to_value(LockInfo::this_process("run-b")).unwrap();
    let ttl = 30.0f64;
    tx.query_typed(
        &inner.sql.upsert_lock,
        &[
            (&"prod" as &(dyn ToSql + Sync), Type::TEXT),
            (&holder, Type::JSONB),
            (&ttl, Type::FLOAT8),
        ],
    )
    .await
    .unwrap();

    // The old holder appends meanwhile, over a connection of its own.
    let (writer, _w) = inner.connector.connect("test-writer").await.unwrap();
    let sql = inner.sql.append.clone();
    let append = tokio::spawn(async move {
        let record = serde_json::json!({"record": "pause_ended", "index": 0});
        writer
            .execute_typed(
                &sql,
                &[
                    (&"prod" as &(dyn ToSql + Sync), Type::TEXT),
                    (&"run-a", Type::TEXT),
                    (&old, Type::INT8),
                    (&record, Type::JSONB),
                ],
            )
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !append.is_finished(),
        "the append waits for the takeover to commit or roll back"
    );
    tx.commit().await.unwrap();
    let inserted = append.await.unwrap().unwrap();
    assert_eq!(
        inserted, 0,
        "once the takeover committed, the old token writes nothing"
    );
    let n = server
        .query(&config.dbname, "SELECT count(*) FROM deploy.journal")
        .await
        .unwrap();
    assert_eq!(n, "0");
    drop(lease);
}
