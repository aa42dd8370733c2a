//! Progress bars for long transfers, drawn on stderr only when a person is watching.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// Files smaller than this finish before a bar would be noticed.
const MIN_BYTES_FOR_BAR: u64 = 8 * 1024 * 1024;

/// A byte progress bar, hidden unless stdout is a terminal (or `force`) and the
/// transfer is large or of unknown size.
pub(crate) fn bytes(total: Option<u64>, force: bool) -> ProgressBar {
    let show = force || (std::io::stdout().is_terminal() && std::io::stderr().is_terminal());
    if !show || total.is_some_and(|t| t < MIN_BYTES_FOR_BAR) {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(total) => ProgressBar::new(total).with_style(
            ProgressStyle::with_template(
                "{bytes:>10} / {total_bytes} [{wide_bar}] {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {bytes} {bytes_per_sec}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    bar
}
