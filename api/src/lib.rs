//! The OpenRisk HTTP API.

pub mod cli;
