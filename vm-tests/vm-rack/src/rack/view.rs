//! The live view on stderr: one line per VM, redrawn in place on a terminal, or printed when a
//! line changes otherwise; and the harness's own messages between redraws.

use std::io::{IsTerminal, Write};

/// The live view.
#[derive(Debug)]
pub struct View {
    /// Draw at all (off with `--quiet`).
    progress: bool,
    /// The run's label (first line of the view).
    label: String,
    tty: bool,
    /// Lines drawn last time (to move back over them on a terminal).
    drawn: usize,
    last_lines: Vec<String>,
}

impl View {
    /// A view of run `label`; draws nothing unless `progress`.
    pub fn new(progress: bool, label: &str) -> Self {
        View {
            progress,
            label: label.to_string(),
            tty: std::io::stderr().is_terminal(),
            drawn: 0,
            last_lines: Vec::new(),
        }
    }

    /// Whether it draws at all.
    pub fn enabled(&self) -> bool {
        self.progress
    }

    /// Draws `lines` at `t`: in place on a terminal; else the lines that changed (every line
    /// when `force`).
    pub fn draw(&mut self, t: f64, lines: Vec<String>, force: bool) {
        if !self.progress {
            return;
        }
        let status_changed = lines != self.last_lines;
        if self.tty {
            let mut err = std::io::stderr().lock();
            if self.drawn > 0 {
                let _ = write!(err, "\x1b[{}A", self.drawn);
            }
            let _ = writeln!(err, "\x1b[2K[{t:6.1} s] rack {}", self.label);
            for l in &lines {
                let _ = writeln!(err, "\x1b[2K{l}");
            }
            self.drawn = lines.len() + 1;
        } else if status_changed || force {
            for (i, l) in lines.iter().enumerate() {
                if self.last_lines.get(i) != Some(l) || force {
                    eprintln!("[{t:6.1} s]{l}");
                }
            }
        }
        self.last_lines = lines;
    }

    /// Prints `msg` at `t` below the view (the next draw starts afresh under it).
    pub fn say(&mut self, t: f64, msg: &str) {
        self.drawn = 0;
        eprintln!("[{t:6.1} s] {msg}");
    }
}
