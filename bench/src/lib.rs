//! rivet-bench (being written).
