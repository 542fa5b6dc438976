#![doc = include_str!("../README.md")]

pub use deploy_core as core;
pub use deploy_core::*;
