//! Per-thread random numbers for ids and weighted picks (meshcore's, shared with trace ids).

pub use meshcore::fast_rand::next_u64;
