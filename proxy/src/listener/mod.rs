//! Accept loops: each hands accepted byte streams to `mqtt::connection::serve`.

pub mod tcp;
