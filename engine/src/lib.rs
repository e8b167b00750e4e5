//! rivet engine (being written).
