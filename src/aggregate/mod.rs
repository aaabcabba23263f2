//! Aggregation and agronomy: the numbers planting decisions are made from (issue 5, in progress).
//! So far the FAO-56 reference evapotranspiration, degree days and the soil-water balance;
//! rollups and the daily indices per block will build on them.

pub mod et0;
pub mod water;
