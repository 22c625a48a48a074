//! NDJSON from a file or standard input: one message per line, positioned by
//! line number.

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

use std::ops::ControlFlow;
use std::path::Path;

use super::{IngestError, RawMessage};
use crate::decode::{DecodeError, Decoded, Decoder, Limits, Message, Pairing};
use crate::event::{Positioned, SourcePos};
use crate::join::{Half, JoinConfig, Joiner, Offered, Unpaired, unpaired_position};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::time::Instant;

pub struct FileControl {
    dead_letter: Option<Mutex<tokio::fs::File>>,
    dead_letter_path: String,
}

impl FileControl {
    pub async fn dead_letter(
        &self,
        msg: &RawMessage,
        reason: &str,
        detail: &str,
    ) -> Result<(), IngestError> {
        tracing::warn!(stream = %msg.pos.stream, line = msg.pos.offset + 1, reason, detail, "undecodable line");
        let Some(file) = &self.dead_letter else {
            return Ok(());
        };
        let line = serde_json::json!({
            "reason": reason,
            "detail": detail,
            "stream": msg.pos.stream,
            "line": msg.pos.offset + 1,
            "payload": String::from_utf8_lossy(&msg.payload),
        });
        let mut f = file.lock().await;
        let io = |source| IngestError::Io {
            path: self.dead_letter_path.clone(),
            source,
        };
        f.write_all(format!("{line}\n").as_bytes())
            .await
            .map_err(io)?;
        f.flush().await.map_err(io)?;
        Ok(())
    }
}

/// Why an NDJSON file could not be read offline.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}")]
    Decode {
        path: String,
        line: usize,
        #[source]
        source: DecodeError,
    },
}

/// Every event of an NDJSON file, positioned by line as the file source
/// positions them, for the offline commands; the first line that does not
/// decode or breaks a limit fails with its file and line. Lines are bytes:
/// one that is not UTF-8 is the decoder's to refuse. The file is read a
/// block at a time into one buffer, and each block's lines are decoded on
/// every core, in contiguous parts joined in file order: decoding is what
/// reading a large capture costs, and a capture need not fit in memory
/// twice. Halves of pairs are then joined in file order, as the daemon
/// joins them.
pub fn read_events(
    path: &Path,
    decoder: &dyn Decoder,
    limits: &Limits,
    join: &JoinConfig,
) -> Result<Vec<Positioned>, ReadError> {
    let name = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| ReadError::Io {
        path: name.clone(),
        source,
    })?;
    let mut all = Vec::new();
    read_each(file, &name, (decoder, limits, join), |events| {
        all.extend(events);
        ControlFlow::Continue(())
    })?;
    Ok(all)
}

/// As `read_events`, from a reader already open (`name` in positions and
/// errors; a pipe or FIFO is read through the one handle it has), handing
/// `each` the events of one block at a time in file order, so that a
/// capture larger than memory can be scored: a block is about `BLOCK`
/// bytes of lines. `each` breaks to stop reading early.
pub fn read_each(
    reader: impl std::io::Read,
    name: &str,
    with: (&dyn Decoder, &Limits, &JoinConfig),
    each: impl FnMut(Vec<Positioned>) -> ControlFlow<()>,
) -> Result<(), ReadError> {
    let parts = crate::detect::parallel::cores().clamp(1, 16);
    read_from(reader, name, (parts, BLOCK), with, each)
}

/// How much of a file is read and decoded at once: enough to keep every
/// core busy between reads, little beside the events it becomes.
const BLOCK: usize = 4 << 20;

/// `read_each` of what `reader` holds, `block` bytes at a time, each
/// block decoded in `parts` runs at once.
fn read_from(
    mut reader: impl std::io::Read,
    name: &str,
    (parts, block): (usize, usize),
    (decoder, limits, join): (&dyn Decoder, &Limits, &JoinConfig),
    mut each: impl FnMut(Vec<Positioned>) -> ControlFlow<()>,
) -> Result<(), ReadError> {
    let now = chrono::Utc::now();
    let failed = |(line, source): DecodeLineError| ReadError::Decode {
        path: name.to_string(),
        line,
        source,
    };
    let io = |source| ReadError::Io {
        path: name.to_string(),
        source,
    };
    let mut lines = LineJoin::new(format!("file:{name}"), join);
    let limit = limits.max_message_bytes;
    let mut blocks = Blocks::new(block, limit);
    // Each part's lines are numbered from its own start: offset by the
    // lines of the parts before it.
    let mut first = 0;
    while let Some(block) = blocks.next(&mut reader).map_err(io)? {
        let bytes = match block {
            Block::Lines(bytes) => bytes,
            // Passed over as any blank line is; refused as any message
            // over the limit is, at its own number.
            Block::OverLong { blank: true, .. } => {
                first += 1;
                continue;
            }
            Block::OverLong { bytes, .. } => {
                return Err(failed((first + 1, DecodeError::TooLarge { bytes, limit })));
            }
        };
        for part in decode_parts(bytes, parts, decoder, limits, now) {
            // The lines before a run's failing line are joined first: one
            // of them may fail the join, and the first failing line is
            // reported.
            for (i, decoded) in part.decoded {
                lines.push(first + i, decoded, now).map_err(failed)?;
            }
            if let Some((line, e)) = part.failed {
                return Err(failed((first + line, e)));
            }
            first += part.lines;
        }
        if each(lines.take()).is_break() {
            return Ok(());
        }
    }
    let _ = each(lines.finish().map_err(failed)?);
    Ok(())
}

/// What `Blocks` hands out: whole lines, or one line longer than any
/// message may be, measured as it was read past, never held whole.
enum Block<'a> {
    Lines(&'a [u8]),
    OverLong { bytes: usize, blank: bool },
}

/// A reader's bytes in blocks of whole lines, in one buffer reused from
/// block to block: the last block ends where the input does, every other
/// one just after a line break. The buffer holds at most about two blocks
/// and the longest line a message may be.
struct Blocks {
    buf: Vec<u8>,
    /// Bytes read into `buf`, where the block last handed out ended, and
    /// how far `buf` is known to hold no line break.
    filled: usize,
    taken: usize,
    scanned: usize,
    block: usize,
    limit: usize,
    done: bool,
}

impl Blocks {
    fn new(block: usize, limit: usize) -> Self {
        Self {
            buf: Vec::new(),
            filled: 0,
            taken: 0,
            scanned: 0,
            block: block.max(1),
            limit,
            done: false,
        }
    }

    fn next(&mut self, reader: &mut impl std::io::Read) -> std::io::Result<Option<Block<'_>>> {
        self.drop_taken();
        loop {
            self.fill(reader)?;
            let unseen = &self.buf[self.scanned..self.filled];
            let end = match memchr::memrchr(b'\n', unseen) {
                _ if self.done => self.filled,
                Some(at) => self.scanned + at + 1,
                // One line, unfinished, and already longer than a message.
                None if self.filled > self.limit => return self.over_long(reader).map(Some),
                // Not one whole line yet: read on.
                None => {
                    self.scanned = self.filled;
                    continue;
                }
            };
            self.taken = end;
            return Ok((end > 0).then(|| Block::Lines(&self.buf[..end])));
        }
    }

    /// The line `buf` starts with, read to its end (a line break, or the
    /// input's end) without being kept: its length and whether it is all
    /// blanks.
    fn over_long(&mut self, reader: &mut impl std::io::Read) -> std::io::Result<Block<'static>> {
        let (mut bytes, mut blank) = (0, true);
        loop {
            let held = &self.buf[..self.filled];
            let end = memchr::memchr(b'\n', held);
            let line = &held[..end.unwrap_or(held.len())];
            bytes += line.len();
            blank &= line.iter().all(u8::is_ascii_whitespace);
            self.taken = end.map_or(self.filled, |at| at + 1);
            if end.is_some() || self.done {
                return Ok(Block::OverLong { bytes, blank });
            }
            self.drop_taken();
            self.fill(reader)?;
        }
    }

    /// What follows the block last handed out, moved to the front.
    fn drop_taken(&mut self) {
        self.buf.copy_within(self.taken..self.filled, 0);
        (self.filled, self.taken, self.scanned) = (self.filled - self.taken, 0, 0);
    }

    /// Reads until a block more than what is held is held, or the input ends.
    fn fill(&mut self, reader: &mut impl std::io::Read) -> std::io::Result<()> {
        let want = self.filled + self.block;
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
        while !self.done && self.filled < want {
            match reader.read(&mut self.buf[self.filled..want]) {
                Ok(0) => self.done = true,
                Ok(n) => self.filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// One contiguous run of a file's lines, decoded: its lines (blank ones
/// included) and, numbered from the run's first line, its events up to
/// the first line that failed, and that line.
struct Part {
    lines: usize,
    decoded: Vec<(usize, Decoded)>,
    failed: Option<DecodeLineError>,
}

/// `bytes` cut at line breaks into `n` runs, each split into lines and
/// decoded on its own thread: splitting and decoding are what reading a
/// large capture costs.
fn decode_parts(
    bytes: &[u8],
    n: usize,
    decoder: &dyn Decoder,
    limits: &Limits,
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<Part> {
    let runs = runs(bytes, n);
    crate::detect::parallel::map_runs(runs.len(), runs.len(), |k| {
        decode_run(runs[k], decoder, limits, now)
    })
}

/// `bytes` in `n` runs of about equal size, each ending just after a line
/// break (the last at the end).
fn runs(bytes: &[u8], n: usize) -> Vec<&[u8]> {
    let mut out = Vec::with_capacity(n);
    let mut rest = bytes;
    for k in (1..=n).rev() {
        let target = rest.len() / k;
        let end = match memchr::memchr(b'\n', &rest[target..]) {
            Some(at) if k > 1 => target + at + 1,
            _ => rest.len(),
        };
        let (run, tail) = rest.split_at(end);
        out.push(run);
        rest = tail;
    }
    out
}

/// A run's lines, decoded in order, numbered from 0.
fn decode_run(
    run: &[u8],
    decoder: &dyn Decoder,
    limits: &Limits,
    now: chrono::DateTime<chrono::Utc>,
) -> Part {
    let mut lines = 0;
    let mut decoded = Vec::new();
    let mut start = 0;
    let ends = memchr::memchr_iter(b'\n', run)
        .chain((!run.is_empty() && !run.ends_with(b"\n")).then_some(run.len()));
    for end in ends {
        let line = &run[start..end];
        start = end + 1;
        let i = lines;
        lines += 1;
        if line.trim_ascii().is_empty() {
            continue;
        }
        match decode_line(line, decoder, limits, now) {
            Ok(d) => decoded.push((i, d)),
            Err(e) => {
                return Part {
                    lines,
                    decoded,
                    failed: Some((i + 1, e)),
                };
            }
        }
    }
    Part {
        lines,
        decoded,
        failed: None,
    }
}

/// A line that failed: its number (from 1) and why.
type DecodeLineError = (usize, DecodeError);

/// Decoded lines in file order, their halves joined.
struct LineJoin {
    stream: String,
    joiner: Joiner<usize>,
    events: Vec<Positioned>,
}

impl LineJoin {
    fn new(stream: String, join: &JoinConfig) -> Self {
        Self {
            stream,
            joiner: Joiner::new(join.clone()),
            events: Vec::new(),
        }
    }

    fn pos(&self, i: usize, index: usize) -> SourcePos {
        SourcePos {
            stream: self.stream.clone(),
            offset: i as i64,
            index: index as i64,
        }
    }

    /// Line `i` (from 0).
    fn push(
        &mut self,
        i: usize,
        decoded: Decoded,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), DecodeLineError> {
        let Some(pairing) = decoded.pairing else {
            for (index, event) in decoded.events.into_iter().enumerate() {
                self.events.push(Positioned::new(event, self.pos(i, index)));
            }
            return Ok(());
        };
        let time = decoded.events.first().map_or(now, |e| e.ts);
        let half = Half {
            pairing,
            bytes: crate::join::weight(&decoded.events),
            events: decoded.events,
            pos: self.pos(i, 0),
            time,
            carried: i,
        };
        match self.joiner.offer(half, Instant::now()) {
            Offered::Waiting => {}
            Offered::Paired { events, .. } => {
                for (index, event) in events.into_iter().enumerate() {
                    self.events.push(Positioned::new(event, self.pos(i, index)));
                }
            }
            Offered::Refused(_, e) => return Err((i + 1, e)),
        }
        let expired = self.joiner.expired(Instant::now());
        self.unpaired(expired)
    }

    fn unpaired(&mut self, halves: Vec<Half<usize>>) -> Result<(), DecodeLineError> {
        for half in halves {
            if self.joiner.config().unpaired == Unpaired::DeadLetter {
                let Pairing { key, side } = half.pairing;
                return Err((half.carried + 1, DecodeError::Unpaired { side, key }));
            }
            let side = half.pairing.side;
            for (index, event) in half.events.into_iter().enumerate() {
                self.events.push(Positioned::new(
                    event,
                    unpaired_position(&half.pos, side, index),
                ));
            }
        }
        Ok(())
    }

    /// The events joined so far, handed on.
    fn take(&mut self) -> Vec<Positioned> {
        std::mem::take(&mut self.events)
    }

    fn finish(mut self) -> Result<Vec<Positioned>, DecodeLineError> {
        let left = self.joiner.drain();
        self.unpaired(left)?;
        Ok(self.events)
    }
}

fn decode_line(
    line: &[u8],
    decoder: &dyn Decoder,
    limits: &Limits,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Decoded, DecodeError> {
    limits.check_size(line)?;
    let decoded = decoder.decode_message(&Message::bare(line, Some(now)))?;
    for e in &decoded.events {
        limits.check(e, Some(now))?;
    }
    Ok(decoded)
}

pub fn start(
    config: &FileConfig,
    tx: mpsc::Sender<RawMessage>,
    cancel: CancellationToken,
) -> Result<FileControl, IngestError> {
    let path = config.path.clone();
    let dead_letter = if config.dead_letter_path.is_empty() {
        None
    } else {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&config.dead_letter_path)
            .map_err(|source| IngestError::Io {
                path: config.dead_letter_path.clone(),
                source,
            })?;
        Some(Mutex::new(tokio::fs::File::from_std(f)))
    };
    let reader: Box<dyn tokio::io::AsyncRead + Unpin + Send> = if path == "-" {
        Box::new(tokio::io::stdin())
    } else {
        let f = std::fs::File::open(&path).map_err(|source| IngestError::Io {
            path: path.clone(),
            source,
        })?;
        Box::new(tokio::fs::File::from_std(f))
    };
    let stream = format!("file:{path}");
    tokio::spawn(async move {
        // Lines as bytes: a line that is not UTF-8 is the decoder's to refuse
        // (and dead-letter), not the end of the input.
        let mut lines = BufReader::new(reader).split(b'\n');
        let mut offset: i64 = 0;
        loop {
            let line = tokio::select! {
                _ = cancel.cancelled() => break,
                line = lines.next_segment() => line,
            };
            match line {
                Ok(Some(line)) => {
                    let pos = SourcePos {
                        stream: stream.clone(),
                        offset,
                        index: 0,
                    };
                    offset += 1;
                    if line.trim_ascii().is_empty() {
                        continue;
                    }
                    // A line without `ts` is stamped with the time it was read.
                    let msg = RawMessage {
                        payload: line,
                        key: None,
                        timestamp: Some(chrono::Utc::now()),
                        topic: stream.clone(),
                        pos,
                        trace_context: Vec::new(),
                        headers: Vec::new(),
                    };
                    if tx.send(msg).await.is_err() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::error!(path = %stream, error = %e, "reading input failed");
                    break;
                }
            }
        }
    });
    Ok(FileControl {
        dead_letter,
        dead_letter_path: config.dead_letter_path.clone(),
    })
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    /// NDJSON path, or `-` for standard input.
    pub path: String,
    /// Where undecodable lines go (NDJSON with the reason); empty: log only.
    pub dead_letter_path: String,
    /// The format of each line (`otlp-genai` reads the Collector's
    /// `otlp_json` file output, one request per line).
    pub format: crate::decode::DecoderName,
}

impl Default for FileConfig {
    fn default() -> Self {
        Self {
            path: "-".into(),
            dead_letter_path: String::new(),
            format: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::JsonDecoder;

    fn collected(
        reader: impl std::io::Read,
        name: &str,
        cuts: (usize, usize),
        with: (&dyn Decoder, &Limits, &JoinConfig),
    ) -> Result<Vec<Positioned>, ReadError> {
        let mut all = Vec::new();
        read_from(reader, name, cuts, with, |events| {
            all.extend(events);
            ControlFlow::Continue(())
        })?;
        Ok(all)
    }

    #[test]
    fn runs_cover_every_byte_once_and_end_at_line_breaks() {
        let texts: [&[u8]; 5] = [b"", b"\n", b"a", b"a\nbb\n\nccc\ndddd", b"a\nbb\n\nccc\n"];
        for text in texts {
            for n in 1..=5 {
                let runs = runs(text, n);
                assert_eq!(runs.len(), n);
                assert_eq!(runs.concat(), text, "{n} runs of {text:?}");
                let ended = runs.iter().filter(|r| !r.is_empty());
                let last = ended.clone().count().saturating_sub(1);
                for (k, r) in ended.enumerate() {
                    assert!(
                        k == last || r.ends_with(b"\n"),
                        "{n} runs of {text:?}: {r:?}"
                    );
                }
            }
        }
    }

    fn event(i: usize) -> String {
        format!(r#"{{"model":"m","request_id":"r-{i}","features":{{"x":{i}}}}}"#)
    }

    /// Lines are numbered across the parts decoded on other threads:
    /// positions and the failing line are the file's own.
    #[test]
    fn lines_keep_their_numbers_across_parts() {
        let read = |lines: &[String], parts| {
            let (limits, join) = (Limits::default(), JoinConfig::default());
            let bytes = lines.join("\n");
            collected(bytes.as_bytes(), "f", parts, (&JsonDecoder, &limits, &join))
        };
        // Blank lines among events, so that each part's count matters.
        let lines: Vec<String> = (0..400)
            .map(|i| if i % 7 == 3 { String::new() } else { event(i) })
            .collect();
        let mut broken = lines.clone();
        broken[377] = "{not json".into();
        // Blocks of a byte, shorter than a line, a few lines, the file.
        let cuts = (1..=4).flat_map(|parts| [1, 29, 300, BLOCK].map(|block| (parts, block)));
        for parts in cuts {
            let events = read(&lines, parts).expect("every line decodes");
            assert_eq!(events.len(), lines.iter().filter(|l| !l.is_empty()).count());
            for p in &events {
                let id = format!("r-{}", p.pos.offset);
                assert_eq!(
                    p.event.request_id.as_deref(),
                    Some(id.as_str()),
                    "{parts:?} (parts, block)"
                );
            }
            match read(&broken, parts) {
                Err(ReadError::Decode { line, .. }) => {
                    assert_eq!(line, 378, "{parts:?} (parts, block)")
                }
                other => panic!(
                    "expected line 378 to fail, got {:?}",
                    other.map(|e| e.len())
                ),
            }
        }
    }

    /// Events are handed on a block at a time, in file order, and reading
    /// stops where the receiver breaks.
    #[test]
    fn events_are_handed_on_block_by_block_until_told_to_stop() {
        let (limits, join) = (Limits::default(), JoinConfig::default());
        let bytes = (0..100).map(event).collect::<Vec<_>>().join("\n");
        let with = (&JsonDecoder as &dyn Decoder, &limits, &join);
        let mut blocks: Vec<Vec<i64>> = Vec::new();
        read_from(bytes.as_bytes(), "f", (2, 300), with, |events| {
            blocks.push(events.iter().map(|p| p.pos.offset).collect());
            ControlFlow::Continue(())
        })
        .unwrap();
        assert!(blocks.len() > 10, "{} blocks", blocks.len());
        assert_eq!(blocks.concat(), (0..100).collect::<Vec<i64>>());
        let mut calls = 0;
        read_from(bytes.as_bytes(), "f", (2, 300), with, |_| {
            calls += 1;
            ControlFlow::Break(())
        })
        .unwrap();
        assert_eq!(calls, 1);
    }

    /// A line that fails the join is reported before a later line of the
    /// same run that does not decode.
    #[test]
    fn the_first_failing_line_is_reported_whichever_stage_fails_it() {
        let lines = [
            r#"{"id":"1","model_name":"m","inputs":[{"name":"x","shape":[2,1],"datatype":"FP32","data":[1,2]}]}"#,
            // One row answering a request of two: the pair is refused.
            r#"{"id":"1","model_name":"m","outputs":[{"name":"p","shape":[1,2],"datatype":"FP32","data":[0.2,0.8]}]}"#,
            "{not json",
        ]
        .join("\n");
        let decoder = crate::decode::OipJsonDecoder::new(Default::default());
        let (limits, join) = (Limits::default(), JoinConfig::default());
        for parts in 1..=3 {
            let got = collected(
                lines.as_bytes(),
                "f",
                (parts, 64),
                (&decoder, &limits, &join),
            );
            match got {
                Err(ReadError::Decode { line, source, .. }) => {
                    assert_eq!(line, 2, "{parts} parts: {source}")
                }
                other => panic!("expected line 2 to fail, got {:?}", other.map(|e| e.len())),
            }
        }
    }

    /// A line longer than a message may be fails by its size, its whole
    /// length, at its own number, however the blocks cut it, last line or
    /// not; one of blanks only is passed over as blank lines are, and the
    /// lines after it keep their numbers.
    #[test]
    fn an_over_long_line_is_refused_or_passed_over_in_blocks() {
        let limits = Limits {
            max_message_bytes: 100,
            ..Limits::default()
        };
        let join = JoinConfig::default();
        let (a, b) = (event(0), event(2));
        // Blanks first, the event after them: not a blank line.
        let padded = format!("{}{}", " ".repeat(200), event(1));
        let (long, blanks) = ("x".repeat(250), " ".repeat(250));
        for block in [1, 7, 64, 1000] {
            let read = |lines: &[&str]| {
                let bytes = lines.join("\n");
                collected(
                    bytes.as_bytes(),
                    "f",
                    (2, block),
                    (&JsonDecoder, &limits, &join),
                )
            };
            let refused: [(Vec<&str>, usize); 4] = [
                (vec![&a, &long, &b], 250),
                (vec![&a, &padded, &b], padded.len()),
                (vec![&a, &long], 250),
                (vec![&a, &long, ""], 250),
            ];
            for (lines, len) in refused {
                match read(&lines) {
                    Err(ReadError::Decode {
                        line,
                        source: DecodeError::TooLarge { bytes, .. },
                        ..
                    }) => assert_eq!((line, bytes), (2, len), "block {block}"),
                    other => panic!("block {block}: {:?}", other.map(|e| e.len())),
                }
            }
            let events = read(&[&a, &blanks, &b]).expect("blanks pass");
            let offsets: Vec<i64> = events.iter().map(|p| p.pos.offset).collect();
            assert_eq!(offsets, [0, 2], "block {block}");
        }
    }

    /// A reader that hands out one byte at a time, interrupted between.
    struct Trickle<'a>(&'a [u8], bool);

    impl std::io::Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            self.1 = !self.1;
            if self.1 {
                return Err(std::io::ErrorKind::Interrupted.into());
            }
            let n = self.0.len().min(out.len()).min(1);
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn blocks_hand_out_every_byte_once_in_whole_lines() {
        let texts: [&[u8]; 7] = [
            b"",
            b"\n\n\n",
            b"a",
            b"a\r\nbb\r\n",
            b"a\nbb\n\nccc\ndddd",
            b"a\nbb\n\nccc\n",
            b"0123456789\n0123456789",
        ];
        for text in texts {
            for block in [1, 3, 10, 11, 1 << 20] {
                let mut blocks = Blocks::new(block, 1000);
                let (mut reader, mut out) = (Trickle(text, false), Vec::new());
                while let Some(got) = blocks.next(&mut reader).expect("reads") {
                    let Block::Lines(got) = got else {
                        panic!("no line here is over long")
                    };
                    assert!(!got.is_empty(), "{text:?} in blocks of {block}");
                    if out.len() + got.len() < text.len() {
                        assert!(
                            got.ends_with(b"\n"),
                            "{text:?} in blocks of {block}: {got:?}"
                        );
                    }
                    out.extend_from_slice(got);
                }
                assert_eq!(out, text, "blocks of {block}");
            }
        }
    }
}
