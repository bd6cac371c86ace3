//! Configuration (design §4). (being written)
