//! The local state store (a state directory) against the StateStore contract.

use deploy_core::state::LocalStateStore;
use deploy_core::testing::conformance;

#[tokio::test]
async fn the_state_directory_passes_the_state_store_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStateStore::new(dir.path().join("state"));
    conformance::state_store(&store, "prod").await;
}
