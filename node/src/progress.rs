//! Progress bars on standard error, for long reads and writes on a terminal.

use std::io::{self, IsTerminal};

use indicatif::{ProgressBar, ProgressStyle};

/// Inputs at least this large get a progress bar (on a terminal).
const PROGRESS_THRESHOLD: u64 = 16 << 20;

pub fn progress_bar(total: Option<u64>, what: &'static str) -> ProgressBar {
    let show = io::stderr().is_terminal() && total.is_none_or(|t| t >= PROGRESS_THRESHOLD);
    if !show {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(t) => ProgressBar::new(t),
        None => ProgressBar::no_length(),
    };
    let template = if total.is_some() {
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
    } else {
        "{msg} {bytes} {bytes_per_sec}"
    };
    bar.set_style(
        ProgressStyle::with_template(template)
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what);
    bar
}
