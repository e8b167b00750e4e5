//! rivet network layer (being written).
