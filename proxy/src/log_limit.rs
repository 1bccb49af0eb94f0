//! Log lines with a budget: events that can come in floods (poison records, QoS 0 drops
//! during a Kafka outage) write at most a few lines per interval and say how many they
//! left out, while their metrics count every one.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most `burst` lines per `every`; the rest are counted.
#[derive(Debug)]
pub struct LogLimit {
    every: Duration,
    burst: u32,
    window: Mutex<Window>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Window {
    started: Option<Instant>,
    written: u32,
    left_out: u64,
}

/// What to do with one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write its line; `left_out` events of the previous window had no line of their own.
    Write { left_out: u64 },
    /// Only count it.
    LeaveOut,
}

/// The decision for an event at `now`: pure, so the budget is tested without a clock.
pub fn decide(window: &mut Window, now: Instant, every: Duration, burst: u32) -> Verdict {
    let fresh = window.started.is_none_or(|s| now.saturating_duration_since(s) >= every);
    if fresh {
        let left_out = std::mem::take(&mut window.left_out);
        *window = Window {
            started: Some(now),
            written: 1,
            left_out: 0,
        };
        return Verdict::Write { left_out };
    }
    if window.written < burst {
        window.written += 1;
        Verdict::Write { left_out: 0 }
    } else {
        window.left_out += 1;
        Verdict::LeaveOut
    }
}

impl LogLimit {
    pub fn new(every: Duration, burst: u32) -> Self {
        Self {
            every,
            burst: burst.max(1),
            window: Mutex::new(Window::default()),
        }
    }

    /// Whether the event happening now gets a line of its own.
    pub fn check(&self) -> Verdict {
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        decide(&mut window, Instant::now(), self.every, self.burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_writes_the_burst_then_counts_and_reports_what_it_left_out() {
        let (every, burst) = (Duration::from_secs(10), 3);
        let start = Instant::now();
        let mut w = Window::default();
        let verdicts: Vec<Verdict> = (0..10).map(|_| decide(&mut w, start, every, burst)).collect();
        assert_eq!(verdicts[..3], [Verdict::Write { left_out: 0 }; 3]);
        assert!(verdicts[3..].iter().all(|v| *v == Verdict::LeaveOut));
        assert_eq!(
            decide(&mut w, start + Duration::from_secs(9), every, burst),
            Verdict::LeaveOut
        );
        assert_eq!(
            decide(&mut w, start + every, every, burst),
            Verdict::Write { left_out: 8 }
        );
        assert_eq!(
            decide(&mut w, start + every * 3, every, burst),
            Verdict::Write { left_out: 0 }
        );
    }
}
