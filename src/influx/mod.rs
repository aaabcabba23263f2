//! InfluxDB: the line protocol, the write clients (v1 `/write`, v2 through the `influxdb2`
//! crate) and the InfluxQL query backend.

pub mod forward;
pub mod line;
pub mod query;
pub mod write;
