#![doc = include_str!("../README.md")]

mod maintenance;
mod nginx;
mod upstream;

pub use deploy_core::{Error, ErrorKind, Result};
pub use maintenance::{
    MAINTENANCE_MARKER, MaintenancePage, MaintenancePageBuilder, MaintenanceSnippet,
    RenderedSnippet,
};
pub use nginx::{Nginx, Reload};
pub use upstream::{UpstreamSwitch, UpstreamSwitchBuilder};

#[cfg(feature = "testing")]
pub mod testing;
