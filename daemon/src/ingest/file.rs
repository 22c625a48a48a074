//! NDJSON from a file or standard input: one message per line, positioned by
//! line number.

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

use super::{IngestError, RawMessage};
use crate::config::FileConfig;
use crate::event::SourcePos;

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
        let mut lines = BufReader::new(reader).lines();
        let mut offset: i64 = 0;
        loop {
            let line = tokio::select! {
                _ = cancel.cancelled() => break,
                line = lines.next_line() => line,
            };
            match line {
                Ok(Some(line)) => {
                    let pos = SourcePos {
                        stream: stream.clone(),
                        offset,
                    };
                    offset += 1;
                    if line.trim().is_empty() {
                        continue;
                    }
                    // A line without `ts` is stamped with the time it was read.
                    let msg = RawMessage {
                        payload: line.into_bytes(),
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
