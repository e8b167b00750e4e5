//! rivet tools (being written).
