//! A channel's messages of the last minute, for services that take only so many (a DingTalk
//! robot 20 a minute): what to send next so that nothing is dropped and the limit holds.
//!
//! With more events waiting than the minute has messages left, all but the last message go
//! one event each and the last is a digest of the rest; with none left, the channel waits
//! for the oldest message to leave the window. 25 events and 18 a minute: 17 messages and a
//! digest of 8.

use std::collections::VecDeque;
use std::time::Duration;

pub const MINUTE_MS: i64 = 60_000;

/// What a service takes from one sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_minute: u32,
    /// The least time between two messages (Feishu: 5 a second).
    pub min_gap: Duration,
}

/// What the channel does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The oldest waiting event, on its own.
    One,
    /// One message for as many waiting events as it can name.
    Digest,
    /// Nothing until then (epoch ms): the minute's messages are spent.
    WaitUntil(i64),
}

/// The times (epoch ms) of the messages the service took in the last minute.
#[derive(Debug, Clone)]
pub struct Window {
    rate: Rate,
    sent: VecDeque<i64>,
}

impl Window {
    /// A window holding `sent`, the times of messages already taken (after a restart, from
    /// the attempt log), oldest first.
    pub fn new(rate: Rate, sent: impl IntoIterator<Item = i64>) -> Self {
        Self {
            rate,
            sent: sent.into_iter().collect(),
        }
    }

    /// What to do at `now` with `waiting` events in the outbox (at least one).
    pub fn plan(&mut self, now: i64, waiting: usize) -> Step {
        while self.sent.front().is_some_and(|&t| t <= now - MINUTE_MS) {
            self.sent.pop_front();
        }
        let gap = self.rate.min_gap.as_millis() as i64;
        if let Some(&last) = self.sent.back()
            && now < last + gap
        {
            return Step::WaitUntil(last + gap);
        }
        let left = (self.rate.per_minute as usize).saturating_sub(self.sent.len());
        if left == 0 {
            let oldest = self.sent.front().copied().unwrap_or(now);
            Step::WaitUntil(oldest + MINUTE_MS)
        } else if left == 1 && waiting > 1 {
            Step::Digest
        } else {
            Step::One
        }
    }

    /// The service took a message at `at`.
    pub fn took(&mut self, at: i64) {
        self.sent.push_back(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EIGHTEEN: Rate = Rate {
        per_minute: 18,
        min_gap: Duration::ZERO,
    };

    /// Sends what the window says until nothing waits; returns each message's event count.
    fn drain(window: &mut Window, mut waiting: usize, now: i64) -> Vec<usize> {
        let mut messages = Vec::new();
        while waiting > 0 {
            match window.plan(now, waiting) {
                Step::One => {
                    messages.push(1);
                    waiting -= 1;
                }
                Step::Digest => {
                    messages.push(waiting);
                    waiting = 0;
                }
                Step::WaitUntil(_) => break,
            }
            window.took(now);
        }
        messages
    }

    #[test]
    fn twenty_five_events_are_seventeen_messages_and_a_digest_of_eight() {
        let mut w = Window::new(EIGHTEEN, []);
        let messages = drain(&mut w, 25, 1_000_000);
        assert_eq!(messages.len(), 18);
        assert!(messages[..17].iter().all(|&n| n == 1));
        assert_eq!(messages[17], 8);
    }

    #[test]
    fn as_many_events_as_the_minute_has_left_go_one_by_one() {
        let mut w = Window::new(EIGHTEEN, []);
        assert_eq!(drain(&mut w, 18, 0), vec![1; 18]);
    }

    #[test]
    fn a_spent_minute_waits_for_its_oldest_message_to_leave_the_window() {
        let start = 5_000_000;
        let mut w = Window::new(EIGHTEEN, (0..18).map(|i| start + i * 1000));
        assert_eq!(
            w.plan(start + 20_000, 3),
            Step::WaitUntil(start + MINUTE_MS)
        );
        // A minute after the first message, one is free again: the last free one of the
        // minute, with three waiting, is a digest.
        assert_eq!(w.plan(start + MINUTE_MS, 3), Step::Digest);
        assert_eq!(w.plan(start + MINUTE_MS, 1), Step::One);
    }

    #[test]
    fn a_minimum_gap_spaces_the_messages() {
        let rate = Rate {
            per_minute: 90,
            min_gap: Duration::from_millis(250),
        };
        let mut w = Window::new(rate, [1_000]);
        assert_eq!(w.plan(1_100, 5), Step::WaitUntil(1_250));
        assert_eq!(w.plan(1_250, 5), Step::One);
    }
}
