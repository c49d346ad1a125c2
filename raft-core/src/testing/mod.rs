//! Test support, behind the `testing` feature: the deterministic cluster
//! simulator, the storage conformance suite every [`crate::LogRead`] adapter
//! runs, and in-memory adapters for drivers.
