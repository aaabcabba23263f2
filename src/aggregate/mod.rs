//! Aggregation and agronomy: the numbers planting decisions are made from (issue 5, in progress).
//! So far the FAO-56 reference evapotranspiration; rollups and the daily indices per block
//! will build on it.

pub mod et0;
