//! NDJSON from a file or standard input: one message per line, positioned by
//! line number.

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

use std::path::Path;

use super::{IngestError, RawMessage};
use crate::decode::{DecodeError, Decoder, Limits};
use crate::event::Positioned;
use crate::event::SourcePos;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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
/// one that is not UTF-8 is the decoder's to refuse. The lines are decoded
/// on every core, in contiguous parts joined in file order: decoding is
/// what reading a large capture costs.
pub fn read_events(
    path: &Path,
    decoder: &dyn Decoder,
    limits: &Limits,
) -> Result<Vec<Positioned>, ReadError> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| ReadError::Io {
        path: name.clone(),
        source,
    })?;
    let lines: Vec<(usize, &[u8])> = bytes
        .split(|b| *b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.trim_ascii().is_empty())
        .collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let part = lines.len().div_ceil(cores.clamp(1, 16)).max(1);
    let stream = format!("file:{name}");
    let now = chrono::Utc::now();
    let parts: Vec<Result<Vec<Positioned>, ReadError>> = std::thread::scope(|scope| {
        let decode = |lines: &[(usize, &[u8])]| {
            lines
                .iter()
                .map(|(i, line)| positioned(*i, line, &stream, decoder, limits, now))
                .collect::<Result<Vec<Vec<Positioned>>, DecodeLineError>>()
                .map(|v| v.into_iter().flatten().collect())
                .map_err(|(line, source)| ReadError::Decode {
                    path: name.clone(),
                    line,
                    source,
                })
        };
        let workers: Vec<_> = lines
            .chunks(part)
            .map(|chunk| scope.spawn(move || decode(chunk)))
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let mut events = Vec::new();
    for part in parts {
        events.extend(part?);
    }
    Ok(events)
}

/// A line that failed: its number (from 1) and why.
type DecodeLineError = (usize, DecodeError);

/// The events of line `i` (from 0), positioned in `stream`.
fn positioned(
    i: usize,
    line: &[u8],
    stream: &str,
    decoder: &dyn Decoder,
    limits: &Limits,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<Positioned>, DecodeLineError> {
    let decoded = decode_line(line, decoder, limits, now).map_err(|e| (i + 1, e))?;
    Ok(decoded
        .into_iter()
        .enumerate()
        .map(|(index, event)| Positioned {
            event,
            pos: SourcePos {
                stream: stream.to_string(),
                offset: i as i64,
                index: index as i64,
            },
        })
        .collect())
}

fn decode_line(
    line: &[u8],
    decoder: &dyn Decoder,
    limits: &Limits,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<crate::event::TelemetryEvent>, DecodeError> {
    limits.check_size(line)?;
    let events = decoder.decode(line, Some(now))?;
    for e in &events {
        limits.check(e, Some(now))?;
    }
    Ok(events)
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
