//! orchardd: a telemetry daemon for citrus co-operatives.
//!
//! The modules follow the data flow of DESIGN.md: sensors publish to orchardd's own MQTT
//! [`endpoint`], or to an external broker that [`ingest`] subscribes to; [`ingest`] decodes
//! and [`validate`]s; the [`store`] commits and only then acknowledges; the [`api`] answers
//! queries. [`daemon`] wires them together, [`config`] types the settings.

pub mod aggregate;
pub mod alerts;
pub mod api;
pub mod bench;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod endpoint;
pub mod harvest;
pub mod health;
pub mod influx;
pub mod ingest;
pub mod metrics;
pub mod model;
pub mod passwd;
pub mod registry;
pub mod reload;
pub mod simulate;
pub mod status;
pub mod store;
pub mod systemd;
pub mod validate;
pub mod web;
