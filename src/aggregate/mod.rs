//! Aggregation and agronomy: the numbers planting decisions are made from. The FAO-56
//! reference evapotranspiration, degree days and the soil-water balance, and the daily indices
//! per block made from them and the readings, each device's day formed over time.

pub mod daily;
pub mod et0;
pub mod indices;
pub mod sun;
pub mod water;
