//! All terminal output goes through [`Printer`]: stdout for results, stderr for diagnostics,
//! colour only when asked for and on a TTY.

use std::io::{IsTerminal, Write};

use crate::plan::render::Style;

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
