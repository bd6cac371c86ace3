//! Logging set-up. (being written)
