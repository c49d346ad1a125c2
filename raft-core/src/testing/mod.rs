//! Test support, behind the `testing` feature: the deterministic cluster
//! simulator, the storage conformance suite every [`crate::LogRead`] adapter
//! runs, and in-memory adapters for drivers.

pub mod cluster;
pub mod conformance;
pub mod oracle;
pub mod sim;
pub mod state_machine;

pub use cluster::Cluster;
pub use oracle::Violation;
pub use sim::{Interceptor, Shape, Sim, SimConfig, SimFailure, SimStats, run_seeds};
