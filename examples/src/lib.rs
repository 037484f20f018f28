//! Shared bits of the example programs (none yet).
