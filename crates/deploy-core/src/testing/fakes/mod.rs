//! In-memory fakes of every trait: real implementations with state you can inspect and failures
//! you can script ([`Faults`]). One file per fake.

mod faults;
mod gate;
mod host;
mod maintenance;
mod migrations;
mod probe;
mod switch;
mod target;

pub use faults::{FaultAction, Faults};
pub(crate) use faults::{finish, lock};
pub use gate::FakeGate;
pub use host::FakeHost;
pub use maintenance::FakeMaintenance;
pub use migrations::FakeMigrations;
pub use probe::FakeProbe;
pub use switch::FakeSwitch;
pub use target::FakeTarget;
