//! Splitting a child's stdout into lines with bounded memory.

use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counts {
    pub(crate) truncated_lines: usize,
    pub(crate) dropped_bytes: u64,
}

pub(crate) struct LineReader {
    max_line: usize,
    max_total: usize,
}

impl LineReader {
    pub(crate) fn new(max_line: usize, max_total: usize) -> Self {
        Self {
            max_line: max_line.max(1024),
            max_total,
        }
    }

    /// Reads `stream` to EOF, sending each line (lossy UTF-8). A line longer than `max_line` is
    /// cut there (the rest is skipped up to its newline); past `max_total` bytes, lines are
    /// counted and dropped — the stream is always read to its end so the child never blocks.
    pub(crate) async fn pump(
        self,
        stream: Option<impl tokio::io::AsyncRead + Unpin>,
        tx: mpsc::Sender<String>,
    ) -> Counts {
        let mut counts = Counts::default();
        let Some(mut s) = stream else { return counts };
        let mut line: Vec<u8> = Vec::new();
        let mut skipping = false; // inside an over-long line
        let mut total: usize = 0;
        let mut receiver_open = true;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut chunk = &buf[..n];
            while !chunk.is_empty() {
                let (part, rest, ended) = match chunk.iter().position(|b| *b == b'\n') {
                    Some(i) => (&chunk[..i], &chunk[i + 1..], true),
                    None => (chunk, &[][..], false),
                };
                chunk = rest;
                if skipping {
                    counts.dropped_bytes += part.len() as u64;
                } else {
                    let room = self.max_line - line.len();
                    if part.len() > room {
                        line.extend_from_slice(&part[..room]);
                        counts.dropped_bytes += (part.len() - room) as u64;
                        counts.truncated_lines += 1;
                        skipping = true;
                    } else {
                        line.extend_from_slice(part);
                    }
                }
                if ended {
                    // An over-long line's head was handed over already.
                    if !(skipping && line.is_empty()) {
                        self.emit(&mut line, &mut total, &mut counts, &tx, &mut receiver_open)
                            .await;
                    }
                    skipping = false;
                } else if skipping && !line.is_empty() {
                    // Hand over the kept head of an over-long line now; drop the rest as it comes.
                    self.emit(&mut line, &mut total, &mut counts, &tx, &mut receiver_open)
                        .await;
                }
            }
        }
        if !line.is_empty() {
            self.emit(&mut line, &mut total, &mut counts, &tx, &mut receiver_open)
                .await;
        }
        counts
    }

    async fn emit(
        &self,
        line: &mut Vec<u8>,
        total: &mut usize,
        counts: &mut Counts,
        tx: &mpsc::Sender<String>,
        open: &mut bool,
    ) {
        let bytes = std::mem::take(line);
        if bytes.last() == Some(&b'\r') && bytes.len() == 1 {
            return;
        }
        if *total + bytes.len() > self.max_total {
            counts.dropped_bytes += bytes.len() as u64;
            return;
        }
        *total += bytes.len();
        if *open
            && tx
                .send(String::from_utf8_lossy(&bytes).into_owned())
                .await
                .is_err()
        {
            *open = false;
        }
    }
}
