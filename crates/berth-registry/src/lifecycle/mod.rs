//! Lifecycle: garbage collection, retention rules and cache eviction, online. One run at
//! a time; every run can be a dry run that reports exactly what the real run would
//! remove (the same transaction, rolled back).

mod evict;
mod gc;
mod retention;

pub use evict::{EvictionOutcome, EvictionPolicy};
pub use gc::{GcOutcome, Grace};
pub use retention::{Pattern, RetentionOutcome, RetentionRule};
