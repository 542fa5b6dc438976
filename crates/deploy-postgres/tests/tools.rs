//! The client tools against a real server: which binaries the runner chooses, who holds the
//! migration lock when a runner gives up waiting, and server warnings kept apart from the error.

mod common;

use common::*;
use deploy_core::{ErrorKind, MigrationRunner};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_warning_is_kept_apart_from_the_error_it_preceded() {
    let (server, config) = setup().await;
    // Outside a transaction (the marker), so that the second COMMIT warns.
    let dir = folder(&[(
        "V1__warn_then_fail.sql",
        "-- deploy:no-transaction\nBEGIN;\nCOMMIT;\nCOMMIT;\nSELECT 1/0;\n",
    )]);
    let e = runner(&server, &config, dir.path())
        .migrate()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CommandFailed);
    let message = e.message();
    assert!(message.contains("22012: division by zero"), "{e}");
    assert!(!message.contains("WARNING"), "{e}");
    assert!(!message.contains("no transaction in progress"), "{e}");
    assert!(!message.contains("LOCATION"), "{e}");
    let context = e.context_values();
    let warnings = context
        .iter()
        .find(|(k, _)| *k == "server warnings")
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no server warnings frame: {e:?}"));
    assert!(
        warnings.contains("25P01: there is no transaction in progress"),
        "{warnings}"
    );
    assert!(!warnings.contains("division by zero"), "{warnings}");
    // The line of the file psql was reading when the error came.
    assert!(
        context.iter().any(|(k, v)| *k == "input line" && v == "5"),
        "{e:?}"
    );
}
