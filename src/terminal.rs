//! Progress for long commands (`verify`, `reconcile`, `cutover --final`): on a terminal, a bar with the count,
//! rate and time left (indicatif); otherwise a plain line at most every few seconds, with no control characters,
//! so logs and CI output stay clean. Either way a command ends with one summary line. Everything goes to stderr:
//! stdout carries the command's result.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

const BAR: &str = "{prefix}: [{bar:30}] {human_pos}/{human_len} ({percent}%) {rate}, {eta} left {msg}";
const SPINNER: &str = "{prefix}: {spinner} {elapsed} {msg}";
const COUNTING: &str = "{prefix}: {spinner} {human_pos} {rate} {msg}";

/// A style with `{rate}`: whole items per second, grouped (`5,523/s`, not indicatif's `5523.4095/s`).
fn style(template: &str) -> ProgressStyle {
    let base = ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_spinner());
    base.with_key(
        "rate",
        |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{}/s", thousands(state.per_sec().round() as i64));
        },
    )
    .progress_chars("=> ")
}

/// How often a plain progress line is written when nothing is drawn.
const PLAIN_EVERY: Duration = Duration::from_secs(10);

pub struct Progress {
    bar: Option<ProgressBar>,
    label: String,
    total: Option<u64>,
    position: u64,
    message: String,
    started: Instant,
    last_line: Option<Instant>,
    every: Duration,
    out: Box<dyn Write + Send>,
}

impl Progress {
    /// A bar on a terminal, plain lines otherwise. `total` is the count when known (a spinner when not).
    pub fn new(label: &str, total: Option<u64>) -> Progress {
        if std::io::stderr().is_terminal() {
            let bar = match total {
                Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()),
                None => ProgressBar::new_spinner(),
            };
            // A spinner counts nothing until a position is set (the surface check never sets one): it shows the
            // time taken, not "0 0/s".
            let template = if total.is_some() { BAR } else { SPINNER };
            bar.set_style(style(template));
            bar.set_prefix(label.to_string());
            bar.enable_steady_tick(Duration::from_millis(200));
            let mut p = Progress::plain(label, total, Box::new(std::io::stderr()), PLAIN_EVERY);
            p.bar = Some(bar);
            p
        } else {
            Progress::plain(label, total, Box::new(std::io::stderr()), PLAIN_EVERY)
        }
    }

    /// Plain lines to `out` at most every `every` (tests pass a buffer and a short interval).
    pub fn plain(label: &str, total: Option<u64>, out: Box<dyn Write + Send>, every: Duration) -> Progress {
        Progress {
            bar: None,
            label: label.to_string(),
            total,
            position: 0,
            message: String::new(),
            started: Instant::now(),
            last_line: None,
            every,
            out,
        }
    }

    pub fn set_total(&mut self, total: u64) {
        self.total = Some(total);
        if let Some(bar) = &self.bar {
            bar.set_length(total);
            bar.set_style(style(BAR));
        }
    }

    pub fn set_position(&mut self, position: u64) {
        if let Some(bar) = &self.bar
            && self.total.is_none()
            && self.position == 0
            && position > 0
        {
            bar.set_style(style(COUNTING));
        }
        self.position = position;
        if let Some(bar) = &self.bar {
            bar.set_position(position);
        }
        self.maybe_line();
    }

    pub fn set_message(&mut self, message: impl Into<String>) {
        self.message = message.into();
        if let Some(bar) = &self.bar {
            bar.set_message(self.message.clone());
        }
        self.maybe_line();
    }

    /// Ends the progress with one line: what was done and how long it took.
    pub fn finish(mut self, summary: &str) {
        let took = crate::engine::progress::duration_text(self.started.elapsed().as_secs() as i64);
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        let _ = writeln!(self.out, "{}: {summary} (in {took})", self.label);
    }

    fn maybe_line(&mut self) {
        if self.bar.is_some() || self.last_line.is_some_and(|t| t.elapsed() < self.every) {
            return;
        }
        self.last_line = Some(Instant::now());
        let line = self.line();
        let _ = writeln!(self.out, "{line}");
    }

    /// `verify: 1,200/5,000 (24%), 300/s, about 13 s left: full check, type 3/18 Observation`.
    fn line(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = self.position as f64 / secs;
        let mut line = format!("{}: {}", self.label, self.position);
        if let Some(total) = self.total.filter(|t| *t > 0) {
            line.push_str(&format!("/{total} ({}%)", self.position * 100 / total));
            if rate > 0.0 && self.position < total {
                let left = ((total - self.position) as f64 / rate) as i64;
                line.push_str(&format!(
                    ", {}/s, about {} left",
                    thousands(rate.round() as i64),
                    crate::engine::progress::duration_text(left)
                ));
            }
        } else if self.position > 0 {
            line.push_str(&format!(", {}/s", thousands(rate.round() as i64)));
        }
        if !self.message.is_empty() {
            line.push_str(&format!(": {}", self.message));
        }
        line
    }
}

/// `1,234,567`.
pub fn thousands(n: i64) -> String {
    let digits = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Without a terminal: plain lines, spaced out, no escape sequences, and a closing summary.
    #[test]
    fn plain_progress_has_no_control_characters_and_ends_with_a_summary() {
        let buffer = Buffer::default();
        let mut p = Progress::plain(
            "verify",
            Some(1000),
            Box::new(buffer.clone()),
            Duration::from_secs(3600),
        );
        p.set_message("full check: type 1/3 Patient");
        for k in 1..=10 {
            p.set_position(k * 100);
        }
        p.finish("1000 versions compared, no difference");
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "one line per interval, then the summary: {text}");
        assert!(
            lines[0].starts_with("verify: 0/1000 (0%): full check: type 1/3 Patient"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("verify: 1000 versions compared, no difference (in "),
            "{text}"
        );
        assert!(!text.chars().any(|c| c.is_control() && c != '\n'), "{text:?}");
    }

    #[test]
    fn the_line_gives_the_rate_and_the_time_left() {
        let mut p = Progress::plain("reconcile", Some(1000), Box::new(std::io::sink()), Duration::ZERO);
        p.started = Instant::now() - Duration::from_secs(10);
        p.position = 250;
        let line = p.line();
        assert!(
            line.starts_with("reconcile: 250/1000 (25%), 25/s, about 30 s left"),
            "{line}"
        );
    }
}
