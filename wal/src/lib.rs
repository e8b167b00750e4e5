//! rivet write-ahead log (being written).
