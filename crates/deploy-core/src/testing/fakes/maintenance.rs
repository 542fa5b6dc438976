//! A fake [`Maintenance`](crate::traits::Maintenance) page.

use std::sync::Mutex;

use async_trait::async_trait;

use crate::error::Result;
use crate::traits::Maintenance;

use super::{Faults, finish, lock};

/// A fake [`Maintenance`] page. Methods for [`Faults`]: `enable`, `disable`, `is_enabled`.
#[derive(Debug, Default)]
pub struct FakeMaintenance {
    on: Mutex<bool>,
    /// Scripted failures.
    pub faults: Faults,
}

impl FakeMaintenance {
    /// A page that is off.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether it is on, without going through the trait.
    pub fn is_on(&self) -> bool {
        *lock(&self.on)
    }
}

#[async_trait]
impl Maintenance for FakeMaintenance {
    async fn enable(&self) -> Result<()> {
        let after = self.faults.enter("fake maintenance page", "enable").await?;
        *lock(&self.on) = true;
        finish(after, Ok(())).await
    }

    async fn disable(&self) -> Result<()> {
        let after = self
            .faults
            .enter("fake maintenance page", "disable")
            .await?;
        *lock(&self.on) = false;
        finish(after, Ok(())).await
    }

    async fn is_enabled(&self) -> Result<bool> {
        let after = self
            .faults
            .enter("fake maintenance page", "is_enabled")
            .await?;
        finish(after, Ok(self.is_on())).await
    }
}
