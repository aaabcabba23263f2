//! Alerts: planting decisions and sensor faults from the readings, as rules in TOML
//! ([`rules`]) whose progress runs on reading time ([`threshold`]) and is committed with the
//! readings that move it ([`store`]); [`notify`] delivers each event, and [`feed`] reads them
//! in order for the API's event stream.

pub mod absence;
pub mod daily;
pub mod feed;
pub mod notify;
pub mod rules;
pub mod store;
pub mod threshold;
