//! The counter service's protocol: every received line (any content) is answered with the
//! running count as decimal text and `\n`. The count starts at 0, so the first reply is `1`.

use std::io::{self, BufRead, Write};

/// Service state: the one number a migration must carry over.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    /// The count, incremented by every request.
    pub count: u64,
}

impl Counter {
    /// Serve one connection until EOF: one reply per line, flushed at once (the client measures
    /// request→reply gaps, so nothing may sit in a buffer). Returns the number of lines served.
    pub fn serve<R: BufRead, W: Write>(&mut self, mut input: R, mut output: W) -> io::Result<u64> {
        let mut line = Vec::new();
        let mut served = 0;
        loop {
            line.clear();
            if input.read_until(b'\n', &mut line)? == 0 {
                return Ok(served);
            }
            self.count += 1;
            served += 1;
            writeln!(output, "{}", self.count)?;
            output.flush()?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_across_lines_and_connections() {
        let mut c = Counter::default();
        let mut out = Vec::new();
        assert_eq!(c.serve(&b"a\nb\nc\n"[..], &mut out).unwrap(), 3);
        assert_eq!(out, b"1\n2\n3\n");
        let mut out = Vec::new();
        // A last line without newline still counts; a new connection continues the count.
        assert_eq!(c.serve(&b"x\ny"[..], &mut out).unwrap(), 2);
        assert_eq!(out, b"4\n5\n");
        assert_eq!(c.count, 5);
    }
}
