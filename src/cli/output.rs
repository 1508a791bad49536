//! All terminal output goes through [`Printer`]: stdout for results, stderr for diagnostics,
//! colour only when asked for and on a TTY.

use std::io::{IsTerminal, Write};

use crate::plan::render::Style;

/// The live summary line under `tend apply`'s progress lines on a terminal: done / running /
/// failed / left and the time elapsed, redrawn in place (`\r`, erase line) after every
/// progress line and once a second. Not used when stdout is not a terminal: plain lines only.
pub struct Live {
    total: usize,
    started: std::time::Instant,
    state: std::sync::Mutex<LiveState>,
}

#[derive(Default)]
struct LiveState {
    running: std::collections::BTreeSet<String>,
    done: usize,
    failed: usize,
}

/// Erase the terminal's current line and go to its start.
const ERASE_LINE: &str = "\r\x1b[2K";

impl Live {
    /// A live summary for `total` changes, when stdout is a terminal.
    pub fn on_terminal(total: usize) -> Option<Live> {
        std::io::stdout().is_terminal().then(|| Live {
            total,
            started: std::time::Instant::now(),
            state: std::sync::Mutex::new(LiveState::default()),
        })
    }

    /// Print a progress line above the summary, counting what it reports.
    pub fn line(&self, line: &str) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        if let Some((address, step)) = crate::apply::progress_step(line) {
            match step {
                crate::apply::Step::Started => {
                    st.running.insert(address.to_owned());
                }
                crate::apply::Step::Done => {
                    st.running.remove(address);
                    st.done += 1;
                }
                crate::apply::Step::Failed => {
                    st.running.remove(address);
                    st.failed += 1;
                }
            }
        }
        let summary = self.summary(&st);
        let mut o = std::io::stdout().lock();
        let _ = write!(o, "{ERASE_LINE}{}\n{summary}", line.trim_end_matches('\n'));
        let _ = o.flush();
    }

    /// Redraw the summary (its clock moves).
    pub fn tick(&self) {
        let Ok(st) = self.state.lock() else {
            return;
        };
        let summary = self.summary(&st);
        let mut o = std::io::stdout().lock();
        let _ = write!(o, "{ERASE_LINE}{summary}");
        let _ = o.flush();
    }

    /// Take the summary line away; what follows prints where it was.
    pub fn finish(&self) {
        let mut o = std::io::stdout().lock();
        let _ = write!(o, "{ERASE_LINE}");
        let _ = o.flush();
    }

    fn summary(&self, st: &LiveState) -> String {
        let left = self
            .total
            .saturating_sub(st.done + st.failed + st.running.len());
        format!(
            "[{} done, {} running, {} failed, {left} left; {}s elapsed]",
            st.done,
            st.running.len(),
            st.failed,
            self.started.elapsed().as_secs()
        )
    }
}

/// Where tend writes.
#[derive(Clone, Copy, Debug)]
pub struct Printer {
    pub style: Style,
}

impl Printer {
    pub fn new(no_color: bool) -> Self {
        let color =
            !no_color && std::env::var_os("NO_COLOR").is_none() && std::io::stdout().is_terminal();
        Printer {
            style: Style { color },
        }
    }

    /// A result on stdout.
    pub fn out(&self, s: &str) {
        let mut o = std::io::stdout().lock();
        let _ = o.write_all(s.as_bytes());
        if !s.ends_with('\n') {
            let _ = o.write_all(b"\n");
        }
        let _ = o.flush();
    }

    /// A large result streamed to stdout by `write` (a state export), never held whole.
    pub fn out_stream<E>(
        &self,
        write: impl FnOnce(&mut dyn Write) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut o = std::io::BufWriter::new(std::io::stdout().lock());
        write(&mut o)?;
        let _ = o.flush();
        Ok(())
    }

    /// A diagnostic on stderr.
    pub fn err(&self, s: &str) {
        let mut e = std::io::stderr().lock();
        let _ = e.write_all(s.as_bytes());
        if !s.ends_with('\n') {
            let _ = e.write_all(b"\n");
        }
    }
}
