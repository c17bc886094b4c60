//! Replay's progress: a bar with events/s and ETA on a terminal, a line every 5 s otherwise;
//! and the replay metrics (messages read, offsets remaining).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::metrics;

/// Progress on a terminal (a bar with events/s and ETA) or as a line every 5 s.
pub(super) struct Progress {
    bar: Option<indicatif::ProgressBar>,
    total: u64,
    done: AtomicU64,
    started: Instant,
    last_line: Mutex<Instant>,
}

impl Progress {
    const LINE_EVERY: Duration = Duration::from_secs(5);

    pub fn new(total: u64, dry_run: bool) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix}[{bar:40}] {human_pos}/{human_len} events  {per_sec}  ETA {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            if dry_run {
                bar.set_prefix("dry run ");
            }
            bar
        });
        if bar.is_none() {
            eprintln!(
                "replaying {total} events{}",
                if dry_run { " (dry run)" } else { "" }
            );
        }
        metrics::replay_remaining(total);
        Self {
            bar,
            total,
            done: Default::default(),
            started: Instant::now(),
            last_line: Mutex::new(Instant::now()),
        }
    }

    pub fn inc(&self) {
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::replay_read(self.total.saturating_sub(done));
        if let Some(bar) = &self.bar {
            bar.inc(1);
            return;
        }
        let mut last = self.last_line.lock().expect("progress lock");
        if last.elapsed() >= Self::LINE_EVERY {
            *last = Instant::now();
            let rate = done as f64 / self.started.elapsed().as_secs_f64();
            let eta = (self.total.saturating_sub(done)) as f64 / rate.max(1e-9);
            eprintln!(
                "replayed {done}/{} events ({rate:.0} events/s, ETA {eta:.0} s)",
                self.total
            );
        }
    }

    /// The replay reached its end offsets (offsets it skipped, such as compacted ones, were
    /// never read, so nothing remains).
    pub fn finish(&self) {
        metrics::replay_remaining(0);
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
