//! tend: a declarative reconciler. See ARCHITECTURE.md for the code map.

pub mod address;
pub mod apply;
pub mod cli;
pub mod daemon;
pub mod desired;
pub mod engine;
pub mod graph;
pub mod manifest;
pub mod model;
pub mod pg;
pub mod plan;
pub mod provider;
pub mod registry;
pub mod state;
pub mod value;
