//! Property tests over random interleavings (filled in below).
