//! The access log: one line per request in nginx's `combined` format, plus the
//! request id and the time taken, so a line can be joined with the other hops'.
//!
//! ```text
//! 127.0.0.1 - - [23/Nov/2026:11:46:51 +0000] "GET / HTTP/1.1" 200 512 "-" "curl/8.0" rid=5f0c… rt=0.002
//! ```
//!
//! Requests never wait on the disk: lines go through a bounded channel to a writer
//! thread that batches them and flushes whenever the channel runs dry. When the disk
//! cannot keep up and the channel is full, a line is dropped and counted
//! ([`AccessLog::dropped`], `scaleup_access_log_dropped_total`) rather than held in
//! memory without end or made to slow the request down.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderMap, HeaderValue, Method, Uri, Version};

/// Where access-log lines go. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AccessLog {
    tx: mpsc::SyncSender<String>,
    dropped: Arc<AtomicU64>,
}

/// Lines waiting for the writer at most: a few seconds of a busy node's traffic,
/// a few MiB of memory.
const QUEUE: usize = 16 * 1024;

impl AccessLog {
    /// Appends to the file at `path` (created with its folder), or to standard
    /// output when `path` is `None`.
    pub fn open(path: Option<&Path>) -> std::io::Result<AccessLog> {
        let sink: Box<dyn Write + Send> = match path {
            Some(path) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| {
                        std::io::Error::new(
                            e.kind(),
                            format!("cannot open access log {}: {e}", path.display()),
                        )
                    })?;
                Box::new(file)
            }
            None => Box::new(std::io::stdout()),
        };
        Self::with_queue(sink, QUEUE)
    }

    fn with_queue(sink: Box<dyn Write + Send>, queue: usize) -> std::io::Result<AccessLog> {
        let (tx, rx) = mpsc::sync_channel::<String>(queue);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(rx, sink))?;
        Ok(AccessLog {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Lines dropped because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    /// Notes what the log line needs from the request, before the request moves on.
    pub fn begin(
        &self,
        method: &Method,
        uri: &Uri,
        version: Version,
        headers: &HeaderMap,
        peer: SocketAddr,
    ) -> Entry {
        let header = |name: http::header::HeaderName| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map_or_else(|| "-".to_string(), quote_safe)
        };
        Entry {
            log: self.clone(),
            started: Instant::now(),
            at: SystemTime::now(),
            peer,
            // HTTP/2 requests carry the scheme and authority in the URI; log the
            // path as nginx does, so lines read the same whatever the protocol.
            request_line: format!(
                "{method} {} {}",
                quote_safe(uri.path_and_query().map_or("/", |p| p.as_str())),
                version_str(version)
            ),
            referer: header(http::header::REFERER),
            user_agent: header(http::header::USER_AGENT),
        }
    }
}

/// What is known of a request when it arrives; finished with [`Entry::finish`].
#[derive(Debug)]
pub struct Entry {
    log: AccessLog,
    started: Instant,
    at: SystemTime,
    peer: SocketAddr,
    request_line: String,
    referer: String,
    user_agent: String,
}

impl Entry {
    /// Writes the line: the response's status, the bytes its body sent, the id.
    pub fn finish(self, status: u16, bytes: u64, request_id: Option<&HeaderValue>) {
        let elapsed = self.started.elapsed();
        let line = format!(
            "{} - - [{}] \"{}\" {status} {bytes} \"{}\" \"{}\" rid={} rt={}\n",
            self.peer.ip(),
            log_time(self.at),
            self.request_line,
            self.referer,
            self.user_agent,
            request_id.and_then(|v| v.to_str().ok()).unwrap_or("-"),
            seconds(elapsed),
        );
        // The request succeeded either way: a full queue (the disk is slower than
        // the traffic) or a dead writer costs the line, counted, not the request.
        if self.log.tx.try_send(line).is_err() {
            self.log.dropped.fetch_add(1, Relaxed);
        }
    }
}

fn write_lines(rx: mpsc::Receiver<String>, sink: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, sink);
    while let Ok(line) = rx.recv() {
        let _ = out.write_all(line.as_bytes());
        while let Ok(more) = rx.try_recv() {
            let _ = out.write_all(more.as_bytes());
        }
        if let Err(e) = out.flush() {
            eprintln!("access log: cannot write: {e}");
        }
    }
}

/// `$request_time`: seconds with millisecond resolution.
fn seconds(d: Duration) -> String {
    format!("{}.{:03}", d.as_secs(), d.subsec_millis())
}

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// A field between double quotes must not break the line's format: quotes,
/// backslashes and control characters are escaped as nginx does (`\x22`).
fn quote_safe(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            out.push_str(&format!("\\x{b:02X}"));
        } else {
            out.push(b as char);
        }
    }
    out
}

/// nginx's `$time_local` in UTC: `23/Nov/2026:11:46:51 +0000`.
fn log_time(at: SystemTime) -> String {
    let t = time::OffsetDateTime::from(at);
    let format = time::macros::format_description!(
        "[day]/[month repr:short]/[year]:[hour]:[minute]:[second] +0000"
    );
    t.format(&format).unwrap_or_else(|_| "-".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combined_format_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/access.log");
        let log = AccessLog::open(Some(&path)).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::USER_AGENT,
            HeaderValue::from_static("curl/8 \"x\""),
        );
        let entry = log.begin(
            &Method::GET,
            &"/a?b=c".parse().unwrap(),
            Version::HTTP_11,
            &headers,
            "10.1.2.3:4444".parse().unwrap(),
        );
        entry.finish(200, 1234, Some(&HeaderValue::from_static("rid1")));
        drop(log);
        let mut text = String::new();
        for _ in 0..100 {
            text = std::fs::read_to_string(&path).unwrap_or_default();
            if !text.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(text.starts_with("10.1.2.3 - - ["), "{text}");
        assert!(
            text.contains(
                "] \"GET /a?b=c HTTP/1.1\" 200 1234 \"-\" \"curl/8 \\x22x\\x22\" rid=rid1 rt=0."
            ),
            "{text}"
        );
    }

    /// A sink that says when it is written to, then blocks until told to go on:
    /// the disk that cannot keep up.
    struct Stuck {
        entered: mpsc::Sender<()>,
        gate: Arc<std::sync::Barrier>,
    }

    impl Write for Stuck {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _ = self.entered.send(());
            self.gate.wait();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_slow_disk_drops_and_counts_lines_instead_of_growing() {
        let gate = Arc::new(std::sync::Barrier::new(2));
        let (entered, writing) = mpsc::channel();
        let sink = Stuck {
            entered,
            gate: gate.clone(),
        };
        let log = AccessLog::with_queue(Box::new(sink), 8).unwrap();
        let peer: SocketAddr = "10.1.2.3:4444".parse().unwrap();
        let line = || {
            log.begin(
                &Method::GET,
                &"/".parse().unwrap(),
                Version::HTTP_11,
                &HeaderMap::new(),
                peer,
            )
            .finish(200, 1, None)
        };
        line();
        writing.recv().unwrap();
        // The writer is stuck on the disk: eight lines queue, the rest are dropped.
        for _ in 0..100 {
            line();
        }
        assert_eq!(log.dropped(), 92);
        gate.wait();
    }
}
