//! The progress bar: shown only when stderr is a terminal and the work is large.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// Work below this many bytes finishes too fast to be worth a bar.
const MIN_BYTES: u64 = 256 << 20;

/// A byte-counting bar on stderr, hidden unless stderr is a terminal.
pub struct Bar {
    bar: ProgressBar,
    label: &'static str,
}

impl Bar {
    /// A bar labelled `label` (not drawn until work starts).
    pub fn new(label: &'static str) -> Bar {
        Bar {
            bar: ProgressBar::hidden(),
            label,
        }
    }
}

impl crate::progress::Progress for Bar {
    fn start(&self, total: u64) {
        if total < MIN_BYTES || !std::io::stderr().is_terminal() {
            return;
        }
        self.bar.set_length(total);
        self.bar
            .set_draw_target(indicatif::ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        self.bar.set_style(style);
        self.bar.set_prefix(self.label);
    }

    fn advance(&self, bytes: u64) {
        self.bar.inc(bytes);
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
