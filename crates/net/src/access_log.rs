//! The access log: one line per request in nginx's `combined` format, plus the
//! request id and the time taken, so a line can be joined with the other hops'
//! (`scaleup trace ID` does), and the W3C trace id when the client sent a valid
//! `traceparent` ([`crate::trace`]):
//!
//! ```text
//! 127.0.0.1 - - [23/Nov/2026:11:46:51 +0000] "GET / HTTP/1.1" 200 512 "-" "curl/8.0" rid=5f0c… rt=0.002140
//! 127.0.0.1 - - [23/Nov/2026:11:46:52 +0000] "GET / HTTP/1.1" 200 512 "-" "curl/8.0" rid=5f0d… rt=0.001873 trace=4bf9…
//! ```
//!
//! With `log_format = "json"` (`[site]`) each line is one JSON object instead, for
//! log shippers, with the same fields named:
//!
//! ```text
//! {"time":"2026-11-23T11:46:51.120Z","remote_addr":"127.0.0.1","method":"GET","uri":"/","protocol":"HTTP/1.1","status":200,"bytes":512,"referer":null,"user_agent":"curl/8.0","request_id":"5f0c…","trace_id":null,"request_time":0.002140}
//! ```
//!
//! Requests never wait on the disk: lines go through a bounded channel to a writer
//! thread that writes them in batches, at most [`BATCH_WAIT`] late. When the disk
//! cannot keep up and the channel is full, a line is dropped and counted
//! ([`AccessLog::dropped`], `scaleup_access_log_dropped_total`) rather than held in
//! memory without end or made to slow the request down.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime};

use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Method, Uri, Version};

/// How access-log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// nginx's `combined` line with `rid=`, `rt=` (and `trace=`) appended: what
    /// people and `grep` read.
    #[default]
    Combined,
    /// One JSON object per line: what log shippers read.
    Json,
}

/// Where access-log lines go. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AccessLog {
    tx: mpsc::SyncSender<String>,
    dropped: Arc<AtomicU64>,
    /// How lines are written: nginx's combined format, or JSON.
    format: LogFormat,
    /// The file it appends to (`None`: standard output).
    path: Option<PathBuf>,
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
        Ok(AccessLog {
            path: path.map(Path::to_path_buf),
            ..Self::with_queue(sink, QUEUE)?
        })
    }

    fn with_queue(sink: Box<dyn Write + Send>, queue: usize) -> std::io::Result<AccessLog> {
        let (tx, rx) = mpsc::sync_channel::<String>(queue);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(rx, sink))?;
        Ok(AccessLog {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
            format: LogFormat::Combined,
            path: None,
        })
    }

    /// The same log, its lines written in `format`.
    pub fn with_format(mut self, format: LogFormat) -> AccessLog {
        self.format = format;
        self
    }

    /// The log a reload asks for: this one when it already writes to `path` in
    /// `format` (its file and writer thread go on), else a new one opened there.
    pub fn reopened(&self, path: Option<&Path>, format: LogFormat) -> std::io::Result<AccessLog> {
        if self.path.as_deref() == path && self.format == format {
            return Ok(self.clone());
        }
        Ok(AccessLog::open(path)?.with_format(format))
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
        // Kept as the request's own buffers (reference-counted clones): nothing is
        // copied or formatted until the line is written.
        Entry {
            log: self.clone(),
            started: Instant::now(),
            at: SystemTime::now(),
            peer,
            method: method.clone(),
            // HTTP/2 requests carry the scheme and authority in the URI; log the
            // path as nginx does, so lines read the same whatever the protocol.
            target: uri.path_and_query().cloned(),
            version,
            referer: headers.get(http::header::REFERER).cloned(),
            user_agent: headers.get(http::header::USER_AGENT).cloned(),
            traceparent: crate::trace::trace_id_of(headers)
                .and_then(|_| headers.get(&crate::trace::TRACEPARENT).cloned()),
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
    method: Method,
    target: Option<PathAndQuery>,
    version: Version,
    referer: Option<HeaderValue>,
    user_agent: Option<HeaderValue>,
    /// The request's `traceparent`, when it carried one valid one.
    traceparent: Option<HeaderValue>,
}

impl Entry {
    /// Writes the line: the response's status, the bytes its body sent, the id.
    pub fn finish(self, status: u16, bytes: u64, request_id: Option<&HeaderValue>) {
        let elapsed = self.started.elapsed();
        let request_id = request_id.and_then(|v| v.to_str().ok());
        let line = match self.log.format {
            LogFormat::Combined => self.combined(status, bytes, request_id, elapsed),
            LogFormat::Json => self.json(status, bytes, request_id, elapsed),
        };
        // The request succeeded either way: a full queue (the disk is slower than
        // the traffic) or a dead writer costs the line, counted, not the request.
        if self.log.tx.try_send(line).is_err() {
            self.log.dropped.fetch_add(1, Relaxed);
        }
    }
}

impl Entry {
    fn target(&self) -> &str {
        self.target.as_ref().map_or("/", PathAndQuery::as_str)
    }

    fn trace_id(&self) -> Option<&str> {
        self.traceparent
            .as_ref()
            .and_then(|v| crate::trace::trace_id(v.as_bytes()))
    }

    fn combined(
        &self,
        status: u16,
        bytes: u64,
        request_id: Option<&str>,
        elapsed: Duration,
    ) -> String {
        use std::fmt::Write as _;
        let mut line = String::with_capacity(256);
        let _ = write!(line, "{} - - [", self.peer.ip());
        push_log_time(&mut line, self.at);
        let _ = write!(line, "] \"{} ", self.method);
        push_quote_safe(&mut line, self.target());
        let _ = write!(line, " {}\" {status} {bytes} \"", version_str(self.version));
        for (i, header) in [&self.referer, &self.user_agent].into_iter().enumerate() {
            if i > 0 {
                line.push_str("\" \"");
            }
            match header.as_ref().and_then(|v| v.to_str().ok()) {
                Some(value) => push_quote_safe(&mut line, value),
                None => line.push('-'),
            }
        }
        let _ = write!(line, "\" rid={} rt=", request_id.unwrap_or("-"));
        push_seconds(&mut line, elapsed);
        if let Some(trace) = self.trace_id() {
            line.push_str(" trace=");
            line.push_str(trace);
        }
        line.push('\n');
        line
    }

    /// One JSON object: strings escaped as JSON requires (quotes, backslashes,
    /// control characters), absent values `null`.
    fn json(&self, status: u16, bytes: u64, request_id: Option<&str>, elapsed: Duration) -> String {
        use std::fmt::Write as _;
        let mut line = String::with_capacity(320);
        line.push_str("{\"time\":");
        json_string(&mut line, Some(&iso_time(self.at)));
        line.push_str(",\"remote_addr\":");
        json_string(&mut line, Some(&self.peer.ip().to_string()));
        line.push_str(",\"method\":");
        json_string(&mut line, Some(self.method.as_str()));
        line.push_str(",\"uri\":");
        json_string(&mut line, Some(self.target()));
        line.push_str(",\"protocol\":");
        json_string(&mut line, Some(version_str(self.version)));
        let _ = write!(line, ",\"status\":{status},\"bytes\":{bytes},\"referer\":");
        json_string(&mut line, header_text(&self.referer));
        line.push_str(",\"user_agent\":");
        json_string(&mut line, header_text(&self.user_agent));
        line.push_str(",\"request_id\":");
        json_string(&mut line, request_id);
        line.push_str(",\"trace_id\":");
        json_string(&mut line, self.trace_id());
        line.push_str(",\"request_time\":");
        push_seconds(&mut line, elapsed);
        line.push_str("}\n");
        line
    }
}

/// A header's value as text; `None` for an absent or non-ASCII one (logged as absent).
fn header_text(value: &Option<HeaderValue>) -> Option<&str> {
    value.as_ref().and_then(|v| v.to_str().ok())
}

/// `value` as a JSON string (or `null`) appended to `out`.
fn json_string(out: &mut String, value: Option<&str>) {
    use std::fmt::Write as _;
    let Some(value) = value else {
        out.push_str("null");
        return;
    };
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// How long the writer lets lines gather after the first of a batch. Writing each line
/// as it came meant a wakeup of this thread and a `write` per request: a tenth of the
/// load balancer's CPU at 30k requests/s (perf, by thread). While the writer sleeps it
/// waits on nothing, so senders wake nobody; a line reaches the file at most this late.
pub const BATCH_WAIT: Duration = Duration::from_millis(5);

/// Blocks for the first line of a burst, then gathers lines every [`BATCH_WAIT`]
/// without blocking for as long as they keep coming, and blocks again only after a
/// gathering found none. Blocked, the writer must be woken by the next sender, under
/// the channel's lock: going back to block after every batch made the serving
/// threads take turns at that lock a hundred times a second under load, and a thread
/// preempted while holding it stalled the other's requests.
fn write_lines(rx: mpsc::Receiver<String>, sink: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, sink);
    while let Ok(line) = rx.recv() {
        let _ = out.write_all(line.as_bytes());
        loop {
            std::thread::sleep(BATCH_WAIT);
            let mut gathered = 0usize;
            while let Ok(more) = rx.try_recv() {
                let _ = out.write_all(more.as_bytes());
                gathered += 1;
            }
            if let Err(e) = out.flush() {
                eprintln!("access log: cannot write: {e}");
            }
            if gathered == 0 {
                break;
            }
        }
    }
}

/// `$request_time`: seconds, with microsecond resolution (nginx has milliseconds;
/// the hops of a site on one machine often take less than one).
fn push_seconds(out: &mut String, d: Duration) {
    use std::fmt::Write as _;
    let _ = write!(out, "{}.{:06}", d.as_secs(), d.subsec_micros());
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
fn push_quote_safe(out: &mut String, s: &str) {
    use std::fmt::Write as _;
    for b in s.bytes() {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            let _ = write!(out, "\\x{b:02X}");
        } else {
            out.push(b as char);
        }
    }
}

/// RFC 3339 in UTC with milliseconds, what log shippers parse: `2026-11-23T11:46:51.120Z`.
fn iso_time(at: SystemTime) -> String {
    let t = time::OffsetDateTime::from(at);
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&format).unwrap_or_else(|_| "-".into())
}

/// nginx's `$time_local` in UTC: `23/Nov/2026:11:46:51 +0000`. The text changes once
/// a second, so each thread keeps the last second's (formatting it per line was 0.7%
/// of the load balancer's CPU; nginx caches it the same way).
fn push_log_time(out: &mut String, at: SystemTime) {
    thread_local! {
        static LAST: std::cell::RefCell<(u64, String)> =
            const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let second = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    LAST.with_borrow_mut(|(cached, text)| {
        if *cached != second {
            *cached = second;
            *text = log_time(at);
        }
        out.push_str(text);
    });
}

/// [`push_log_time`]'s text, formatted.
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
    fn the_cached_time_is_each_lines_own_second() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        for at in [
            t0,
            t0 + Duration::from_millis(999),
            t0 + Duration::from_secs(1),
            t0,
        ] {
            let mut line = String::new();
            push_log_time(&mut line, at);
            assert_eq!(line, log_time(at));
        }
        assert_ne!(log_time(t0), log_time(t0 + Duration::from_secs(1)));
    }

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
        headers.insert(
            &crate::trace::TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
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
        assert!(
            text.ends_with(" trace=4bf92f3577b34da6a3ce929d0e0e4736\n"),
            "{text}"
        );
    }

    #[test]
    fn json_lines_are_valid_json_with_every_field_escaped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::open(Some(&path))
            .unwrap()
            .with_format(LogFormat::Json);
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::USER_AGENT,
            HeaderValue::from_static("agent \"quoted\" back\\slash\ttab"),
        );
        headers.insert(
            &crate::trace::TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let entry = log.begin(
            &Method::POST,
            &"/p?q=%22x%22".parse().unwrap(),
            Version::HTTP_2,
            &headers,
            "[2001:db8::1]:4444".parse().unwrap(),
        );
        entry.finish(201, 7, Some(&HeaderValue::from_static("rid-2")));
        drop(log);
        let mut text = String::new();
        for _ in 0..100 {
            text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.ends_with('\n') {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(text.lines().count(), 1, "{text}");
        let line: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(line["remote_addr"], "2001:db8::1");
        assert_eq!(line["method"], "POST");
        assert_eq!(line["uri"], "/p?q=%22x%22");
        assert_eq!(line["protocol"], "HTTP/2.0");
        assert_eq!(line["status"], 201);
        assert_eq!(line["bytes"], 7);
        assert_eq!(line["referer"], serde_json::Value::Null);
        assert_eq!(line["user_agent"], "agent \"quoted\" back\\slash\ttab");
        assert_eq!(line["request_id"], "rid-2");
        assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(line["request_time"].as_f64().unwrap() < 1.0);
        let time = line["time"].as_str().unwrap();
        assert!(time.len() == 24 && time.ends_with('Z'), "{time}");

        let mut escaped = String::new();
        json_string(&mut escaped, Some("a\u{1}b\u{2028}\n"));
        assert_eq!(escaped, "\"a\\u0001b\\u2028\\n\"");
        assert_eq!(
            serde_json::from_str::<String>(&escaped).unwrap(),
            "a\u{1}b\u{2028}\n"
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
