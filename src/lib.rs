//! Facade over the `deploy` workspace: re-exports [`deploy_core`] and, behind one feature each,
//! the adapter crates.

pub use deploy_core as core;
pub use deploy_core::*;
