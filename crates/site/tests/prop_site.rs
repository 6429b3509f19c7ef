//! Properties of the site-file parser (`site::parse`): the text an operator writes,
//! read by every node at start and by `scaleup check`.
//!
//! Whatever the text, `parse` returns (never panics), and when it refuses the text
//! every mistake points inside it: its line exists, its column is on that line (or
//! just after its end), `source_line` is that line's text, and the message renders.
//! Two kinds of text are tried: TOML-ish lines made of the schema's own tables, keys
//! and kinds of values (so the checker behind the TOML parser is reached, not only
//! the TOML parser), and the built-in default site (`site::default_site`) with a few
//! edits, which is what a person editing a copy of it produces.
//!
//! The number of cases comes from `PROPTEST_CASES` (proptest's default, 256, when it is
//! unset); `bench/fuzz` runs this file with 100,000.

use std::path::Path;

use proptest::prelude::*;
use site::SiteError;

/// Parses `text` and checks what any answer must satisfy.
fn check(text: &str) -> Result<(), TestCaseError> {
    let err = match site::parse(text, "site.toml", Path::new("/srv/site")) {
        Ok(_) => return Ok(()),
        Err(err) => err,
    };
    let (origin, mistakes) = match &err {
        SiteError::Invalid { origin, mistakes } => (origin, mistakes),
        SiteError::Io { .. } => return Err(TestCaseError::fail("parse never reads a file")),
    };
    prop_assert!(!mistakes.is_empty(), "refused without a mistake");
    let lines: Vec<&str> = text.split('\n').collect();
    for m in mistakes {
        prop_assert!(
            (1..=lines.len()).contains(&m.line),
            "line {} of a {}-line text: {}",
            m.line,
            lines.len(),
            m.message
        );
        let line = lines[m.line - 1];
        prop_assert_eq!(&m.source_line, line.trim_end_matches('\r'));
        prop_assert!(
            (1..=line.chars().count() + 1).contains(&m.column),
            "column {} on a line of {} characters: {}",
            m.column,
            line.chars().count(),
            m.message
        );
        prop_assert!(m.width >= 1);
        let rendered = m.render(origin);
        prop_assert!(rendered.contains(&m.message));
    }
    let _ = err.to_string();
    Ok(())
}

const TABLES: &[&str] = &[
    "[site]",
    "[balancer]",
    "[balancer.health]",
    "[balancer.timeouts]",
    "[cluster]",
    "[[lb]]",
    "[[web]]",
    "[[web.cache]]",
    "[web.health]",
    "[web.headers]",
    "[[app]]",
    "[tls]",
    "[database]",
    "[access_log]",
    "[nope]",
    "[[site]]",
];

const KEYS: &[&str] = &[
    "name",
    "listen",
    "tls_listen",
    "admin",
    "heartbeat",
    "priority",
    "apps",
    "servers",
    "algorithm",
    "max_connections",
    "retries",
    "tls_mode",
    "https_redirect",
    "trusted_proxies",
    "path",
    "interval",
    "timeout",
    "rise",
    "fall",
    "connect",
    "client",
    "server",
    "keepalive",
    "mode",
    "address",
    "tls_address",
    "secret",
    "secret_env",
    "insecure_no_secret",
    "dead_after",
    "preempt",
    "interface",
    "on_active",
    "on_passive",
    "match",
    "cache_control",
    "hsts",
    "cert",
    "key",
    "kind",
    "primary",
    "replicas",
    "password_env",
    "max_replica_lag",
    "read_your_writes_timeout",
    "managed",
    "on_no_replica_ack",
    "state_dir",
    "root",
    "max_body_bytes",
    "bind",
    "\"quoted key\"",
    "a.b",
];

/// Values of every kind the schema takes, right and wrong.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        (0..70_000u32).prop_map(|n| n.to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        Just("\"127.0.0.1:8080\"".to_owned()),
        Just("\"[::1]:443\"".to_owned()),
        Just("\"web1\"".to_owned()),
        Just("\"lb1\"".to_owned()),
        Just("\"1s\"".to_owned()),
        Just("\"500ms\"".to_owned()),
        Just("\"roundrobin\"".to_owned()),
        Just("\"mysql://u:p@127.0.0.1:3306/db\"".to_owned()),
        Just("[\"web1\", \"web2\"]".to_owned()),
        Just("[\"10.0.0.0/8\", \"::1/128\", \"300.1.1.1/33\"]".to_owned()),
        Just("{ a = 1 }".to_owned()),
        Just("[]".to_owned()),
        Just("1979-05-27T07:32:00Z".to_owned()),
        "\"[ -~]{0,24}\"",
        "'[^'\n]{0,24}'",
        "\"\\PC{0,12}\"",
        "[0-9a-z:./\\-\\[\\]\"]{0,16}",
    ]
}

/// Strings the schema takes somewhere: addresses, durations, names, the words of
/// its enums, paths, and near misses of each.
fn string() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(
            &[
                "127.0.0.1:0",
                "127.0.0.1:8081",
                "127.0.0.1:99999",
                "[::1]:443",
                "[::1]",
                ":80",
                "localhost:80",
                "0.0.0.0:8080",
                "",
                " ",
                "0s",
                "1s",
                "500ms",
                "1000000000h",
                "forever",
                "-1s",
                "web1",
                "web2",
                "lb1",
                "lb2",
                "app1",
                "app9",
                "WEB1",
                "roundrobin",
                "leastconn",
                "source",
                "random",
                "tcp",
                "http",
                "local",
                "linux",
                "hook",
                "sqlite",
                "mysql",
                "/healthz",
                "healthz",
                "/with space",
                "foobar.db",
                "/static/*",
                "public, max-age=3600",
                "max-age=63072000",
                "10.0.0.0/8",
                "mysql://root@127.0.0.1:3306/foobar",
                "mysql://u:p@[::1]/db",
                "eth0",
            ][..]
        )
        .prop_map(str::to_owned),
        "[ -~]{0,20}",
        "\\PC{0,8}",
    ]
    .prop_map(|s| quote(&s))
}

/// `text` as a TOML basic string.
fn quote(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A value of the same TOML type as `old` (a string for a string, and so on), so
/// that the TOML parser and serde accept it and the site checker has to judge it.
#[derive(Debug, Clone)]
struct Typed {
    string: String,
    integer: i64,
    boolean: bool,
    array: Vec<String>,
}

impl Typed {
    fn like(&self, old: &str) -> String {
        let old = old.trim();
        if old.starts_with('"') || old.starts_with('\'') {
            self.string.clone()
        } else if old.starts_with('[') {
            format!("[{}]", self.array.join(", "))
        } else if old == "true" || old == "false" {
            self.boolean.to_string()
        } else {
            self.integer.to_string()
        }
    }
}

fn typed() -> impl Strategy<Value = Typed> {
    (
        string(),
        prop_oneof![
            -2..300i64,
            Just(u16::MAX as i64 + 1),
            Just(u32::MAX as i64 + 1),
            any::<i64>()
        ],
        any::<bool>(),
        proptest::collection::vec(string(), 0..4),
    )
        .prop_map(|(string, integer, boolean, array)| Typed {
            string,
            integer,
            boolean,
            array,
        })
}

/// One line of TOML-ish text.
fn line() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (prop::sample::select(KEYS), value()).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => prop::sample::select(TABLES).prop_map(str::to_owned),
        1 => "# \\PC{0,20}",
        1 => "\\PC{0,30}",
        1 => Just(String::new()),
    ]
}

/// A table of the schema (or not) with distinct keys, so that most documents are
/// well-formed TOML and reach the site checker behind the TOML parser.
fn table() -> impl Strategy<Value = String> {
    (
        prop::sample::select(TABLES),
        prop::sample::subsequence(KEYS, 0..8),
        proptest::collection::vec(prop_oneof![value(), string()], 8),
    )
        .prop_map(|(header, keys, values)| {
            let mut out = format!("{header}\n");
            for (key, value) in keys.iter().zip(values) {
                out.push_str(&format!("{key} = {value}\n"));
            }
            out
        })
}

fn toml_ish() -> impl Strategy<Value = String> {
    prop_oneof![
        // Loose lines: mostly TOML mistakes.
        (
            proptest::collection::vec(line(), 0..40),
            prop_oneof![Just("\n"), Just("\r\n")],
        )
            .prop_map(|(lines, eol)| lines.join(eol)),
        // Whole tables: mostly the checker's mistakes.
        proptest::collection::vec(table(), 0..10).prop_map(|tables| tables.concat()),
    ]
}

/// One edit a person (or a bad merge) could make to a site file.
#[derive(Debug, Clone)]
enum Edit {
    /// Remove a byte range (cut to character boundaries).
    Delete(usize, usize),
    /// Insert text at a byte offset (moved to a character boundary).
    Insert(usize, String),
    /// Replace one line with another.
    ReplaceLine(usize, String),
    /// Give one `key = value` line another value.
    ReplaceValue(usize, Typed),
    /// Repeat one line right after itself.
    DuplicateLine(usize),
    /// Swap two lines.
    SwapLines(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        1 => (any::<usize>(), 0..64usize).prop_map(|(at, len)| Edit::Delete(at, len)),
        1 => (
            any::<usize>(),
            prop_oneof![
                line().prop_map(|l| format!("{l}\n")),
                "[\"'\\[\\]{}=,#\\\\\n\r\t .0-9a-z]{1,4}",
                "\\PC{1,4}"
            ]
        )
            .prop_map(|(at, text)| Edit::Insert(at, text)),
        1 => (any::<usize>(), line()).prop_map(|(at, l)| Edit::ReplaceLine(at, l)),
        6 => (any::<usize>(), typed()).prop_map(|(at, v)| Edit::ReplaceValue(at, v)),
        1 => any::<usize>().prop_map(Edit::DuplicateLine),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
    ]
}

fn floor_boundary(text: &str, mut at: usize) -> usize {
    at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn apply(text: &str, edit: &Edit) -> String {
    let lines = || text.split('\n').map(str::to_owned).collect::<Vec<_>>();
    match edit {
        Edit::Delete(at, len) => {
            let start = floor_boundary(text, at % (text.len() + 1));
            let end = floor_boundary(text, start + len);
            format!("{}{}", &text[..start], &text[end..])
        }
        Edit::Insert(at, insert) => {
            let at = floor_boundary(text, at % (text.len() + 1));
            format!("{}{insert}{}", &text[..at], &text[at..])
        }
        Edit::ReplaceLine(at, line) => {
            let mut lines = lines();
            let n = lines.len();
            lines[at % n] = line.clone();
            lines.join("\n")
        }
        Edit::ReplaceValue(at, value) => {
            let mut lines = lines();
            let keyed: Vec<usize> = (0..lines.len())
                .filter(|&i| !lines[i].starts_with('#') && lines[i].contains(" = "))
                .collect();
            if let Some(&i) = keyed.get(at % keyed.len().max(1)) {
                let (key, old) = lines[i].split_once(" = ").unwrap_or_default();
                lines[i] = format!("{key} = {}", value.like(old));
            }
            lines.join("\n")
        }
        Edit::DuplicateLine(at) => {
            let mut lines = lines();
            let i = at % lines.len();
            let copy = lines[i].clone();
            lines.insert(i, copy);
            lines.join("\n")
        }
        Edit::SwapLines(a, b) => {
            let mut lines = lines();
            let n = lines.len();
            lines.swap(a % n, b % n);
            lines.join("\n")
        }
    }
}

proptest! {
    #[test]
    fn toml_ish_text_never_panics_and_errors_point_inside_it(text in toml_ish()) {
        check(&text)?;
    }

    #[test]
    fn any_text_never_panics_and_errors_point_inside_it(text in "\\PC{0,200}") {
        check(&text)?;
    }

    #[test]
    fn edits_of_the_default_site_never_panic_and_errors_point_inside_it(
        edits in proptest::collection::vec(edit(), 1..6),
    ) {
        let mut text = site::default_site(8080, "/var/lib/scaleup", "0123456789abcdef");
        for e in &edits {
            text = apply(&text, e);
        }
        check(&text)?;
    }

    /// The default site itself is accepted for every base port that leaves room for
    /// its ports, and for any state directory and secret the quoting can carry.
    #[test]
    fn the_default_site_parses(
        base in 1024..=(u16::MAX - 30),
        state_dir in "/[ -~]{0,40}",
        secret in "[ -~]{16,64}",
    ) {
        let text = site::default_site(base, &state_dir, &secret);
        let parsed = site::parse(&text, "default", Path::new("/srv/site"));
        prop_assert!(parsed.is_ok(), "{}", parsed.unwrap_err());
    }
}
