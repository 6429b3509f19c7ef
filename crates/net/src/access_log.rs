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
//! Requests never wait on the disk: each serving thread appends its lines to a
//! buffer of its own, and a writer thread swaps the buffers out and writes them in
//! batches, at most [`BATCH_WAIT`] late. When the disk cannot keep up and a buffer
//! is full ([`BUFFERED`]), a line is dropped and counted ([`AccessLog::dropped`],
//! `scaleup_access_log_dropped_total`) rather than held in memory without end or
//! made to slow the request down.
//!
//! Why buffers per thread rather than a channel of lines: a line is formatted
//! straight into its buffer (no `String` per line, none freed by another thread),
//! the buffers hold only the lines of the current batch (a bounded channel's ring of
//! 16k slots is all touched, 384 KiB, once the traffic has gone round it), and the
//! serving threads share nothing but a flag read per line (see [`Lines::push`]).

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Method, Uri, Version};

use crate::per_thread::PerThread;

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
    queue: Arc<Queue>,
    /// How lines are written: nginx's combined format, or JSON.
    format: LogFormat,
    /// The file it appends to (`None`: standard output).
    path: Option<PathBuf>,
}

/// The bytes of lines a serving thread's buffer holds at most while the writer is
/// behind: at 30k requests/s on one thread, a disk stalled for a tenth of a second.
pub const BUFFERED: usize = 1 << 20;

/// The lines waiting for the writer, shared with it.
#[derive(Debug)]
struct Lines {
    /// One buffer per serving thread: a line goes into its own thread's, whose lock
    /// the writer's swap contends for once a batch.
    buffers: PerThread<Mutex<String>>,
    /// Bytes a buffer may hold before lines are dropped.
    limit: usize,
    dropped: AtomicU64,
    /// The writer is blocked until a line comes (see [`Lines::push`]).
    asleep: AtomicBool,
    /// Every [`AccessLog`] is gone: the writer writes what is left and ends.
    closed: AtomicBool,
    /// The writer's thread, to wake it.
    writer: OnceLock<std::thread::Thread>,
}

/// The senders' side of the writer: dropped with the last clone of its log, it tells
/// the writer to finish.
#[derive(Debug)]
struct Queue(Arc<Lines>);

impl Drop for Queue {
    fn drop(&mut self) {
        self.0.closed.store(true, SeqCst);
        if let Some(writer) = self.0.writer.get() {
            writer.unpark();
        }
    }
}

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
            ..Self::with_limit(sink, BUFFERED)?
        })
    }

    fn with_limit(sink: Box<dyn Write + Send>, limit: usize) -> std::io::Result<AccessLog> {
        let lines = Arc::new(Lines {
            buffers: PerThread::new(Mutex::default),
            limit,
            dropped: AtomicU64::new(0),
            asleep: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            writer: OnceLock::new(),
        });
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn({
                let lines = lines.clone();
                move || write_lines(&lines, sink)
            })?;
        Ok(AccessLog {
            queue: Arc::new(Queue(lines)),
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

    /// Lines dropped because the writer could not keep up, or the file refused them
    /// (a full disk).
    pub fn dropped(&self) -> u64 {
        self.queue.0.dropped.load(Relaxed)
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
        let answer = Answer {
            status,
            bytes,
            request_id: request_id.and_then(|v| v.to_str().ok()),
            elapsed: self.started.elapsed(),
        };
        // The request succeeded either way: a full buffer (the disk is slower than
        // the traffic) costs the line, counted, not the request.
        self.log.queue.0.push(|line| self.write_line(line, &answer));
    }

    /// Appends the line to `line`.
    fn write_line(&self, line: &mut String, answer: &Answer) {
        match self.log.format {
            LogFormat::Combined => self.combined(line, answer),
            LogFormat::Json => self.json(line, answer),
        }
    }
}

/// What a line says of the answer.
#[derive(Debug, Clone, Copy)]
struct Answer<'a> {
    status: u16,
    /// Bytes its body sent.
    bytes: u64,
    request_id: Option<&'a str>,
    /// From the request's arrival to the answer's end.
    elapsed: Duration,
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

    fn combined(&self, line: &mut String, answer: &Answer) {
        use std::fmt::Write as _;
        let _ = write!(line, "{} - - [", self.peer.ip());
        push_log_time(line, self.at);
        let _ = write!(line, "] \"{} ", self.method);
        push_quote_safe(line, self.target());
        let _ = write!(
            line,
            " {}\" {} {} \"",
            version_str(self.version),
            answer.status,
            answer.bytes
        );
        for (i, header) in [&self.referer, &self.user_agent].into_iter().enumerate() {
            if i > 0 {
                line.push_str("\" \"");
            }
            match header.as_ref().and_then(|v| v.to_str().ok()) {
                Some(value) => push_quote_safe(line, value),
                None => line.push('-'),
            }
        }
        let _ = write!(line, "\" rid={} rt=", answer.request_id.unwrap_or("-"));
        push_seconds(line, answer.elapsed);
        if let Some(trace) = self.trace_id() {
            line.push_str(" trace=");
            line.push_str(trace);
        }
        line.push('\n');
    }

    /// One JSON object: strings escaped as JSON requires (quotes, backslashes,
    /// control characters), absent values `null`.
    fn json(&self, line: &mut String, answer: &Answer) {
        use std::fmt::Write as _;
        line.push_str("{\"time\":");
        json_string(line, Some(&iso_time(self.at)));
        line.push_str(",\"remote_addr\":");
        json_string(line, Some(&self.peer.ip().to_string()));
        line.push_str(",\"method\":");
        json_string(line, Some(self.method.as_str()));
        line.push_str(",\"uri\":");
        json_string(line, Some(self.target()));
        line.push_str(",\"protocol\":");
        json_string(line, Some(version_str(self.version)));
        let _ = write!(
            line,
            ",\"status\":{},\"bytes\":{},\"referer\":",
            answer.status, answer.bytes
        );
        json_string(line, header_text(&self.referer));
        line.push_str(",\"user_agent\":");
        json_string(line, header_text(&self.user_agent));
        line.push_str(",\"request_id\":");
        json_string(line, answer.request_id);
        line.push_str(",\"trace_id\":");
        json_string(line, self.trace_id());
        line.push_str(",\"request_time\":");
        push_seconds(line, answer.elapsed);
        line.push_str("}\n");
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

/// How long the writer lets lines gather between two writes. Writing each line as it
/// came meant a wakeup of this thread and a `write` per request: a tenth of the load
/// balancer's CPU at 30k requests/s (perf, by thread). While lines keep coming the
/// writer only sleeps this long, so senders wake nobody; a line reaches the file at
/// most this late.
pub const BATCH_WAIT: Duration = Duration::from_millis(5);

impl Lines {
    /// Appends one line, written by `write`, to the calling thread's buffer, or
    /// drops and counts it when that buffer is full; wakes the writer if it sleeps.
    ///
    /// The only thing the serving threads share here is the `asleep` flag, read once
    /// a line and written only when the writer blocks or is woken: once at the start
    /// of a burst, not once a batch (a channel's writer that blocked after each batch
    /// had to be woken under a lock the serving threads took turns at, a hundred
    /// times a second under load: see `per_thread`).
    fn push(&self, write: impl FnOnce(&mut String)) {
        {
            let mut buffer = locked(self.buffers.mine());
            if buffer.len() >= self.limit {
                drop(buffer);
                self.dropped.fetch_add(1, Relaxed);
                return;
            }
            write(&mut buffer);
        }
        if self.asleep.load(SeqCst) && self.asleep.swap(false, SeqCst) {
            if let Some(writer) = self.writer.get() {
                writer.unpark();
            }
        }
    }

    /// Whether no buffer holds a line.
    fn empty(&self) -> bool {
        self.buffers.iter().all(|b| locked(b).is_empty())
    }

    /// Blocks the writer until a line comes or the log is closed. The flag is set
    /// before the buffers are looked at, and a sender reads it after its line is
    /// in: either the writer sees the line, or the sender sees the flag and wakes it.
    fn sleep(&self) {
        self.asleep.store(true, SeqCst);
        while self.asleep.load(SeqCst) && !self.closed.load(SeqCst) && self.empty() {
            std::thread::park();
        }
        self.asleep.store(false, SeqCst);
    }
}

/// A buffer, locked: whoever held it last left it whole, even if it panicked.
fn locked(buffer: &Mutex<String>) -> std::sync::MutexGuard<'_, String> {
    buffer.lock().unwrap_or_else(|e| e.into_inner())
}

/// A gathering's buffer keeps its room for the next (no allocation per batch), up
/// to this; one grown by a stalled disk is shrunk back to it.
const KEPT: usize = 256 * 1024;

/// The writer thread: every [`BATCH_WAIT`], swaps each thread's buffer for an empty
/// one and writes what it held; after a gathering that found nothing, sleeps until
/// a line comes. Ends once the log is closed and written out.
fn write_lines(lines: &Lines, mut sink: Box<dyn Write + Send>) {
    let _ = lines.writer.set(std::thread::current());
    let mut spare = String::new();
    loop {
        std::thread::sleep(BATCH_WAIT);
        let closed = lines.closed.load(SeqCst);
        let mut gathered = false;
        for buffer in lines.buffers.iter() {
            std::mem::swap(&mut *locked(buffer), &mut spare);
            if spare.is_empty() {
                continue;
            }
            gathered = true;
            if let Err((e, lost)) = write_out(&mut sink, spare.as_bytes()) {
                lines.dropped.fetch_add(lost, Relaxed);
                eprintln!("access log: cannot write ({lost} line(s) lost): {e}");
            }
            spare.clear();
            spare.shrink_to(KEPT);
        }
        if gathered {
            if let Err(e) = sink.flush() {
                eprintln!("access log: cannot write: {e}");
            }
        }
        if closed {
            return;
        }
        if !gathered {
            lines.sleep();
        }
    }
}

/// Writes `batch` to `sink`; when the sink fails, how many of its lines did not get
/// there whole (counted with the dropped ones: a full disk loses lines as surely as
/// a slow one).
fn write_out(sink: &mut dyn Write, batch: &[u8]) -> Result<(), (std::io::Error, u64)> {
    let mut written = 0;
    while written < batch.len() {
        match sink.write(&batch[written..]) {
            Ok(0) => {
                let e = std::io::Error::from(std::io::ErrorKind::WriteZero);
                return Err((e, lines_from(batch, written)));
            }
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err((e, lines_from(batch, written))),
        }
    }
    Ok(())
}

/// The lines of `batch` not whole in its first `written` bytes.
fn lines_from(batch: &[u8], written: usize) -> u64 {
    // A line cut midway counts: its end did not get there.
    let whole = batch[..written].iter().filter(|&&b| b == b'\n').count();
    let all = batch.iter().filter(|&&b| b == b'\n').count();
    (all - whole) as u64
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
        entered: std::sync::mpsc::Sender<()>,
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

    fn entry(log: &AccessLog) -> Entry {
        let peer: SocketAddr = "10.1.2.3:4444".parse().unwrap();
        log.begin(
            &Method::GET,
            &"/".parse().unwrap(),
            Version::HTTP_11,
            &HeaderMap::new(),
            peer,
        )
    }

    /// The line `entry(..).finish(200, 1, None)` writes (every such line has its
    /// length: the time taken is written to the microsecond).
    fn one_line() -> String {
        let mut one = String::new();
        let sizing = AccessLog::with_limit(Box::new(std::io::sink()), 0).unwrap();
        let answer = Answer {
            status: 200,
            bytes: 1,
            request_id: None,
            elapsed: Duration::from_micros(7),
        };
        entry(&sizing).write_line(&mut one, &answer);
        one
    }

    #[test]
    fn a_slow_disk_drops_and_counts_lines_instead_of_growing() {
        let gate = Arc::new(std::sync::Barrier::new(2));
        let (entered, writing) = std::sync::mpsc::channel();
        let sink = Stuck {
            entered,
            gate: gate.clone(),
        };
        // Room for eight lines (all the same length: the time taken is written to
        // the microsecond, with as many digits below a second).
        let one = one_line();
        let log = AccessLog::with_limit(Box::new(sink), 8 * one.len()).unwrap();
        entry(&log).finish(200, 1, None);
        writing.recv().unwrap();
        // The writer is stuck on the disk: eight lines wait, the rest are dropped.
        for _ in 0..100 {
            entry(&log).finish(200, 1, None);
        }
        assert_eq!(log.dropped(), 92);
        gate.wait();
    }

    /// Waits up to a second for the file at `path` to hold `lines` lines.
    fn wait_for_lines(path: &Path, lines: usize) -> String {
        let mut text = String::new();
        for _ in 0..100 {
            text = std::fs::read_to_string(path).unwrap_or_default();
            if text.lines().count() >= lines {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        text
    }

    #[test]
    fn a_line_after_a_quiet_spell_wakes_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::open(Some(&path)).unwrap();
        entry(&log).finish(200, 1, None);
        assert_eq!(wait_for_lines(&path, 1).lines().count(), 1);
        // Quiet for longer than a few batches: the writer is asleep, and the next
        // line must wake it (it would otherwise wait for ever).
        std::thread::sleep(BATCH_WAIT * 10);
        assert!(
            log.queue.0.asleep.load(SeqCst),
            "the writer sleeps when idle"
        );
        entry(&log).finish(201, 2, None);
        assert_eq!(wait_for_lines(&path, 2).lines().count(), 2);
    }

    /// A sink that keeps what it is given and says when it is dropped: the writer
    /// thread, which owns it, has ended.
    struct Kept {
        bytes: Arc<Mutex<Vec<u8>>>,
        ended: std::sync::mpsc::Sender<()>,
    }

    impl Write for Kept {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.bytes.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Drop for Kept {
        fn drop(&mut self) {
            let _ = self.ended.send(());
        }
    }

    /// A disk that takes the first `room` bytes and then is full.
    struct Full {
        room: usize,
    }

    impl Write for Full {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.room == 0 {
                return Err(std::io::Error::other("no space left on device"));
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_a_full_disk_did_not_take_are_counted_as_dropped() {
        let one = one_line();
        // Room for two lines and half of a third: eight lines, six lost (the cut one
        // with them).
        let room = 2 * one.len() + one.len() / 2;
        let log = AccessLog::with_limit(Box::new(Full { room }), BUFFERED).unwrap();
        for _ in 0..8 {
            entry(&log).finish(200, 1, None);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while log.dropped() < 6 {
            assert!(Instant::now() < deadline, "dropped {}", log.dropped());
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(BATCH_WAIT * 4);
        assert_eq!(log.dropped(), 6);
    }

    #[test]
    fn a_closed_log_is_written_out_and_its_writer_ends() {
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let (ended, writer_ended) = std::sync::mpsc::channel();
        let sink = Kept {
            bytes: bytes.clone(),
            ended,
        };
        let log = AccessLog::with_limit(Box::new(sink), BUFFERED).unwrap();
        // Still in the buffers (the writer gathers every 5 ms) when the last handle
        // goes: written all the same, and then the writer ends.
        for _ in 0..50 {
            entry(&log).finish(202, 3, None);
        }
        drop(log);
        writer_ended
            .recv_timeout(Duration::from_secs(5))
            .expect("the writer ends once its log is closed");
        let text = String::from_utf8(bytes.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().filter(|l| l.contains(" 202 3 ")).count(), 50);
    }
}
