//! `scaleup trace ID`: one request followed through the site. Every hop logs its
//! requests with the same request id (`X-Request-Id`, given by the first hop), so
//! the lines for one id, gathered from every node's logs, are that request's path:
//! the load balancer's access log, the web server's, the application server's, and
//! each node's own log (`STATE/logs/NODE.log` under `scaleup up`: warnings such as a
//! server that failed mid-request name the id too).
//!
//! The lines are printed from the client inwards (load balancers, web servers,
//! application servers), each with its node and the time that hop took (`rt=`, or
//! `request_time` in JSON lines). A W3C trace id (the client's `traceparent`,
//! logged as `trace=`) works as `ID` too: then every request of that trace is shown.
//!
//! The logs are read where the site file says they are, on this machine: for a site
//! spread over several servers, run it where the logs are gathered.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use site::Role;

use crate::SiteArgs;

/// Where a node's own log goes under `scaleup up` (its standard output and error).
pub(crate) fn node_log(site: &site::Site, node: &str) -> PathBuf {
    node_log_in(&site.state_dir, node)
}

/// [`node_log`] from the state directory alone.
pub(crate) fn node_log_in(state_dir: &Path, node: &str) -> PathBuf {
    state_dir.join("logs").join(format!("{node}.log"))
}

/// One line found for the id.
#[derive(Debug, PartialEq)]
pub(crate) struct Found {
    pub node: String,
    pub role: Role,
    /// `access` or `node`: which log of the node it came from.
    pub log: &'static str,
    /// The hop's time in seconds, from an access-log line.
    pub took: Option<f64>,
    pub line: String,
}

pub fn trace(args: &SiteArgs, id: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !id.is_empty() && id.len() <= 128 && id.bytes().all(is_id_byte),
        "`{id}` is not a request id: it is 1 to 128 of A-Z a-z 0-9 . _ - \
         (the X-Request-Id response header, or the rid= field of a log line)"
    );
    let (_, site) = crate::load_site(args, false)?;
    let (found, searched) = gather(&site, id)?;
    if found.is_empty() {
        anyhow::bail!(
            "no log line names {id}; searched {}",
            if searched.is_empty() {
                "nothing: no node of this site has a log file on this machine (an access \
                 log of \"-\" goes to standard output, which only `scaleup up` keeps, in \
                 STATE/logs/)"
                    .to_string()
            } else {
                searched
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
    }
    print!("{}", render(id, &found));
    Ok(())
}

/// Every line naming `id` in the site's logs, from the client inwards; and the
/// files that were there to search.
pub(crate) fn gather(site: &site::Site, id: &str) -> anyhow::Result<(Vec<Found>, Vec<PathBuf>)> {
    let mut found = Vec::new();
    let mut searched = Vec::new();
    let mut nodes: Vec<(Role, &site::Node, Option<&Path>)> = Vec::new();
    nodes.extend(
        site.lbs
            .iter()
            .map(|l| (Role::Lb, &l.node, l.access_log.as_deref())),
    );
    nodes.extend(
        site.webs
            .iter()
            .map(|w| (Role::Web, &w.node, w.access_log.as_deref())),
    );
    nodes.extend(
        site.apps
            .iter()
            .map(|a| (Role::App, &a.node, a.access_log.as_deref())),
    );
    for (role, node, access_log) in nodes {
        let own = node_log(site, &node.name);
        for (log, path) in [("access", access_log), ("node", Some(own.as_path()))] {
            let Some(path) = path else { continue };
            let file = match std::fs::File::open(path) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
            };
            searched.push(path.to_path_buf());
            for line in BufReader::new(file).lines() {
                let line = line.map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
                if names(&line, id) {
                    found.push(Found {
                        node: node.name.clone(),
                        role,
                        log,
                        took: took(&line),
                        line,
                    });
                }
            }
        }
    }
    Ok((found, searched))
}

/// The characters of a request id (and of a trace id).
fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

/// Whether `line` names `id` as a whole token (an id that is a prefix of another
/// does not match it).
pub(crate) fn names(line: &str, id: &str) -> bool {
    let bytes = line.as_bytes();
    line.match_indices(id).any(|(at, _)| {
        let before = at.checked_sub(1).map(|i| bytes[i]);
        let after = bytes.get(at + id.len()).copied();
        !before.is_some_and(is_id_byte) && !after.is_some_and(is_id_byte)
    })
}

/// The hop's time in seconds: `rt=` of a combined line, `request_time` of a JSON one.
pub(crate) fn took(line: &str) -> Option<f64> {
    if line.starts_with('{') {
        let doc: serde_json::Value = serde_json::from_str(line).ok()?;
        return doc["request_time"].as_f64();
    }
    line.split(' ')
        .find_map(|field| field.strip_prefix("rt="))
        .and_then(|t| t.parse().ok())
}

/// The lines as printed: one per line found, node and time first, then a summary of
/// the hops' times.
pub(crate) fn render(id: &str, found: &[Found]) -> String {
    use std::fmt::Write;
    let mut out = format!("request {id}: {} line(s)\n", found.len());
    for f in found {
        let took = f
            .took
            .map_or_else(|| "-".to_string(), |t| format!("{:.3} ms", t * 1000.0));
        let _ = writeln!(
            out,
            "  {:<6} {:<3} {:<6} {:>11}  {}",
            f.node,
            f.role.as_str(),
            f.log,
            took,
            f.line
        );
    }
    let hops: Vec<String> = found
        .iter()
        .filter_map(|f| Some(format!("{} {:.3} ms", f.node, f.took? * 1000.0)))
        .collect();
    if !hops.is_empty() {
        let _ = writeln!(out, "hops: {}", hops.join(" -> "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_matches_only_as_a_whole_token() {
        let line = "127.0.0.1 - - [x] \"GET / HTTP/1.1\" 200 5 \"-\" \"-\" rid=abc12 rt=0.004";
        assert!(names(line, "abc12"));
        assert!(!names(line, "abc1"));
        assert!(!names(line, "bc12"));
        assert!(names(r#"{"request_id":"abc12","x":1}"#, "abc12"));
        assert!(names("WARN proxy: request_id=\"abc12\" refused", "abc12"));
    }

    #[test]
    fn the_hop_time_comes_from_either_format() {
        let combined =
            "1.2.3.4 - - [x] \"GET / HTTP/1.1\" 200 5 \"-\" \"a b\" rid=r rt=0.004 trace=t";
        assert_eq!(took(combined), Some(0.004));
        assert_eq!(
            took(r#"{"request_id":"r","request_time":0.012}"#),
            Some(0.012)
        );
        assert_eq!(took("no time here"), None);
    }

    #[test]
    fn render_lists_lines_then_the_hops() {
        let found = vec![
            Found {
                node: "lb1".into(),
                role: Role::Lb,
                log: "access",
                took: Some(0.004),
                line: "L".into(),
            },
            Found {
                node: "app1".into(),
                role: Role::App,
                log: "access",
                took: Some(0.002),
                line: "A".into(),
            },
        ];
        let text = render("r1", &found);
        assert!(text.starts_with("request r1: 2 line(s)\n"), "{text}");
        assert!(text.contains("lb1    lb  access    4.000 ms  L"), "{text}");
        assert!(
            text.ends_with("hops: lb1 4.000 ms -> app1 2.000 ms\n"),
            "{text}"
        );
    }
}
