//! Harvest: lots from harvest scales, grading lines and staff, graded against a standard and
//! kept beside the season's telemetry; the traceability record and public page a box's QR
//! code opens, the label that carries it, the shop listing, and the season report.

pub mod grade;
pub mod label;
pub mod lot;
pub mod public;
pub mod report;
pub mod season;
pub mod store;

use std::sync::Arc;

use crate::aggregate::indices::Day;
use crate::model::{Ident, TimestampMs};
use crate::validate::Rejection;
use grade::{Graded, Standard};
use lot::{Arrival, Lot};

/// A lot checked and graded on its way in, ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    pub lot: Lot,
    pub graded: Graded,
}

/// Reads lots off their MQTT topic (`lots.topic`) and grades them.
#[derive(Debug, Clone)]
pub struct Intake {
    /// The topic's levels; `{orchard}` and `{block}` placeholders among them.
    levels: Vec<String>,
    standard: Arc<Standard>,
    utc_offset_ms: i64,
}

impl Intake {
    pub fn new(topic: &str, standard: Arc<Standard>, utc_offset_ms: i64) -> Self {
        Self {
            levels: topic.split('/').map(str::to_owned).collect(),
            standard,
            utc_offset_ms,
        }
    }

    /// The MQTT filter of the lot topic.
    pub fn filter(&self) -> String {
        self.levels
            .iter()
            .map(|l| if l.starts_with('{') { "+" } else { l.as_str() })
            .collect::<Vec<_>>()
            .join("/")
    }

    /// `None` when `topic` is not the lot topic; else the orchard and block it names.
    pub fn place(&self, topic: &str) -> Option<Result<(Ident, Ident), Rejection>> {
        let parts: Vec<&str> = topic.split('/').collect();
        if parts.len() != self.levels.len() {
            return None;
        }
        let (mut orchard, mut block) = ("", "");
        for (level, part) in self.levels.iter().zip(&parts) {
            match level.as_str() {
                "{orchard}" => orchard = part,
                "{block}" => block = part,
                l if l != *part => return None,
                _ => {}
            }
        }
        let ident = crate::ingest::topic::topic_ident;
        Some(ident("orchard", orchard).and_then(|o| Ok((o, ident("block", block)?))))
    }

    /// Checks and grades one lot payload that arrived on the lot topic.
    pub fn by_mqtt(
        &self,
        orchard: &Ident,
        block: &Ident,
        payload: &[u8],
        received_at: TimestampMs,
    ) -> Result<Incoming, Vec<Rejection>> {
        self.judge(payload, Arrival::Topic { orchard, block }, received_at)
    }

    /// Checks and grades one lot posted through the API.
    pub fn by_http(&self, body: &[u8]) -> Result<Incoming, Vec<Rejection>> {
        self.judge(body, Arrival::Body, TimestampMs::now())
    }

    fn judge(
        &self,
        payload: &[u8],
        arrival: Arrival<'_>,
        at: TimestampMs,
    ) -> Result<Incoming, Vec<Rejection>> {
        let today = Day::of(at.0, self.utc_offset_ms);
        let lot = lot::read(payload, arrival, &self.standard, today)?;
        let graded = self.standard.grade(&lot);
        Ok(Incoming { lot, graded })
    }

    pub fn standard(&self) -> &Standard {
        &self.standard
    }
}
