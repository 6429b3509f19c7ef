//! The small values every section is made of: addresses, durations, counts,
//! health checks, timeouts, algorithms, address blocks, headers and cache rules.

use super::*;

impl Checker<'_> {
    /// `log_format` in `[site]`: how access-log lines are written.
    pub(super) fn log_format(&mut self, value: Option<&Spanned<String>>) -> LogFormat {
        let Some(value) = value else {
            return LogFormat::Combined;
        };
        match value.get_ref().as_str() {
            "combined" => LogFormat::Combined,
            "json" => LogFormat::Json,
            other => {
                self.mistake(
                    value.span(),
                    format!("unknown log_format `{other}`"),
                    "write \"combined\" (nginx's access-log line, the default) or \"json\" \
                     (one JSON object per line, for log shippers)",
                );
                LogFormat::Combined
            }
        }
    }

    pub(super) fn address(&mut self, value: &Spanned<String>, key: &str) -> SocketAddr {
        value.get_ref().parse().unwrap_or_else(|_| {
            self.mistake(
                value.span(),
                format!("`{}` is not an address for `{key}`", value.get_ref()),
                "write an IP address and a port, like \"127.0.0.1:8080\" or \"[::1]:8080\"",
            );
            SocketAddr::from(([0, 0, 0, 0], 0))
        })
    }

    pub(super) fn duration(
        &mut self,
        value: Option<&Spanned<String>>,
        default: Duration,
    ) -> Duration {
        let Some(value) = value else { return default };
        match humantime::parse_duration(value.get_ref()) {
            Ok(d) if !d.is_zero() => d,
            _ => {
                self.mistake(
                    value.span(),
                    format!("`{}` is not a duration", value.get_ref()),
                    "write a positive duration with its unit, like \"100ms\", \"2s\" or \"1m\"",
                );
                default
            }
        }
    }

    pub(super) fn count(&mut self, value: Option<&Spanned<u32>>, default: u32) -> u32 {
        match value {
            Some(v) if *v.get_ref() == 0 => {
                self.mistake(v.span(), "this count must be at least 1", "write 1 or more");
                default
            }
            Some(v) => *v.get_ref(),
            None => default,
        }
    }

    /// A server's `weight`: 1..=256. Zero is refused with a pointer to `drain`, the
    /// way to take a server out that says so everywhere.
    pub(super) fn weight(&mut self, value: Option<&Spanned<i64>>) -> u32 {
        let Some(value) = value else {
            return DEFAULT_WEIGHT;
        };
        match u32::try_from(*value.get_ref()) {
            Ok(w @ 1..=MAX_WEIGHT) => w,
            Ok(0) => {
                self.mistake(
                    value.span(),
                    "a weight of 0 is not allowed",
                    "write 1 to 256; to take a server out of the pool for a while, \
                     run `scaleup drain NODE` (and `scaleup ready NODE` to bring it back)",
                );
                DEFAULT_WEIGHT
            }
            _ => {
                self.mistake(
                    value.span(),
                    format!("`{}` is not a weight", value.get_ref()),
                    "write a whole number from 1 to 256: the server's share of traffic \
                     relative to the others (a server of weight 2 gets twice the requests \
                     of one of weight 1)",
                );
                DEFAULT_WEIGHT
            }
        }
    }

    /// `slowstart`: a duration, or `"0s"` (or `"0"`) for none.
    pub(super) fn slowstart(&mut self, value: Option<&Spanned<String>>) -> Duration {
        let Some(value) = value else {
            return DEFAULT_SLOWSTART;
        };
        let text = value.get_ref().trim();
        if text == "0" {
            return Duration::ZERO;
        }
        match humantime::parse_duration(text) {
            Ok(d) if d <= Duration::from_secs(3600) => d,
            _ => {
                self.mistake(
                    value.span(),
                    format!("`{}` is not a slow-start duration", value.get_ref()),
                    "write a duration up to an hour, like \"10s\" or \"1m\", or \"0s\" to give \
                     a server its whole share at once",
                );
                DEFAULT_SLOWSTART
            }
        }
    }

    /// The name of an environment variable (`SCALEUP_ADMIN_TOKEN`), for `key`.
    pub(super) fn env_name(&mut self, value: &Spanned<String>, key: &str) -> Option<String> {
        let name = value.get_ref();
        let valid = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if valid {
            return Some(name.clone());
        }
        self.mistake(
            value.span(),
            format!("`{name}` is not an environment variable name for `{key}`"),
            "write letters, digits and `_`, not starting with a digit, like \"SCALEUP_ADMIN_TOKEN\"",
        );
        None
    }

    pub(super) fn health(&mut self, raw: Option<&RawHealth>) -> HealthCheck {
        HealthCheck {
            path: self.health_path(raw.and_then(|h| h.path.as_ref())),
            interval: self.duration(
                raw.and_then(|h| h.interval.as_ref()),
                Duration::from_secs(2),
            ),
            timeout: self.duration(raw.and_then(|h| h.timeout.as_ref()), Duration::from_secs(1)),
            rise: self.count(raw.and_then(|h| h.rise.as_ref()), 2),
            fall: self.count(raw.and_then(|h| h.fall.as_ref()), 3),
        }
    }

    /// The path a health check requests: it goes into a request line as it is, so it
    /// must be a request target (`/` then URL characters), not just any text.
    pub(super) fn health_path(&mut self, raw: Option<&Spanned<String>>) -> String {
        let Some(raw) = raw else {
            return "/healthz".into();
        };
        let path = raw.get_ref();
        let Some((at, problem)) = request_target_problem(path) else {
            return path.clone();
        };
        // Point at the character itself when the value is written without escapes.
        let span = raw.span();
        let span = if self.text.get(span.clone()) == Some(&format!("\"{path}\"")) {
            let start = span.start + 1 + at;
            let width = path[at..].chars().next().map_or(1, char::len_utf8);
            start..start + width
        } else {
            span
        };
        self.mistake(
            span,
            format!("`{path}` cannot be a health-check path: {problem}"),
            "write a path that starts with `/` and uses URL characters only, like \"/healthz\"; \
             write a space or another special character as %XX (a space is %20)",
        );
        "/healthz".into()
    }

    pub(super) fn timeouts(&mut self, raw: Option<&RawTimeouts>) -> Timeouts {
        Timeouts {
            connect: self.duration(raw.and_then(|t| t.connect.as_ref()), Duration::from_secs(3)),
            client: self.duration(raw.and_then(|t| t.client.as_ref()), Duration::from_secs(30)),
            server: self.duration(raw.and_then(|t| t.server.as_ref()), Duration::from_secs(60)),
            keepalive: self.duration(
                raw.and_then(|t| t.keepalive.as_ref()),
                Duration::from_secs(75),
            ),
            // An hour, as HAProxy users commonly set `timeout tunnel` for WebSockets.
            tunnel: self.duration(
                raw.and_then(|t| t.tunnel.as_ref()),
                Duration::from_secs(3600),
            ),
            drain: self.duration(raw.and_then(|t| t.drain.as_ref()), Duration::from_secs(10)),
        }
    }

    pub(super) fn algorithm(&mut self, raw: Option<&Spanned<String>>) -> Algorithm {
        let Some(raw) = raw else {
            return Algorithm::RoundRobin;
        };
        match raw.get_ref().as_str() {
            "roundrobin" => Algorithm::RoundRobin,
            "leastconn" => Algorithm::LeastConn,
            "source" => Algorithm::Source,
            other => {
                self.mistake(
                    raw.span(),
                    format!("unknown algorithm `{other}`"),
                    "write \"roundrobin\", \"leastconn\" or \"source\"",
                );
                Algorithm::RoundRobin
            }
        }
    }

    /// One `trusted_proxies` entry: an address or an address block.
    pub(super) fn cidr(&mut self, value: &Spanned<String>) -> Option<Cidr> {
        let text = value.get_ref();
        let hint = match text.parse::<Cidr>() {
            Ok(block) => return Some(block),
            Err(CidrError::HostBits(block)) => format!(
                "the bits after the first {} are not zero; write the block's first address, \"{block}\"",
                block.prefix
            ),
            Err(CidrError::Address | CidrError::Prefix) => {
                "write an IP address (\"192.0.2.1\") or a block (\"10.0.0.0/8\", \"2001:db8::/32\") \
                 of the proxies in front of the load balancers"
                    .to_string()
            }
        };
        self.mistake(
            value.span(),
            format!("`{text}` is not an address or address block"),
            hint,
        );
        None
    }

    /// `10.0.0.100/24:80`: a floating IP, its prefix length and the port clients use.
    pub(super) fn cidr_with_port(
        &mut self,
        value: &Spanned<String>,
    ) -> (std::net::IpAddr, u8, u16) {
        let text = value.get_ref();
        let parsed = text.rsplit_once(':').and_then(|(cidr, port)| {
            let (ip, prefix) = cidr.split_once('/')?;
            let ip: std::net::IpAddr = ip.parse().ok()?;
            let prefix: u8 = prefix.parse().ok()?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            (prefix <= max).then_some((ip, prefix, port.parse().ok()?))
        });
        parsed.unwrap_or_else(|| {
            self.mistake(
                value.span(),
                format!("`{text}` is not a floating address"),
                "write IP/PREFIX:PORT, like \"10.0.0.100/24:80\"",
            );
            (std::net::IpAddr::from([0, 0, 0, 0]), 32, 0)
        })
    }

    /// Extra response headers: the secure defaults, overridden or removed (empty
    /// value) by the site's `[web.headers]` table.
    pub(super) fn headers(&mut self, raw: Option<&toml::Table>) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = DEFAULT_HEADERS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let Some(raw) = raw else { return out };
        for (name, value) in raw {
            let lower = name.to_ascii_lowercase();
            let valid_name = !lower.is_empty()
                && lower
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
            let value = match value.as_str() {
                Some(v) if valid_name && !v.contains(['\r', '\n']) => v.to_string(),
                _ => {
                    self.mistakes.push(Mistake::at(
                        self.text,
                        self.key_span(name),
                        format!("`{name}` is not a header name with a text value"),
                        Some(
                            "write a header name (letters, digits, dashes) = \"value\", or \
                             \"\" to drop a default header"
                                .into(),
                        ),
                    ));
                    continue;
                }
            };
            out.retain(|(k, _)| *k != lower);
            if !value.is_empty() {
                out.push((lower, value));
            }
        }
        out
    }

    /// Where a key of a free-form table first appears (tables keep no spans).
    pub(super) fn key_span(&self, key: &str) -> Range<usize> {
        self.text
            .find(key)
            .map(|at| at..at + key.len())
            .unwrap_or(0..0)
    }

    pub(super) fn cache_rule(&mut self, raw: &RawCache) -> CacheRule {
        if !raw.pattern.get_ref().starts_with(['/', '*']) {
            self.mistake(
                raw.pattern.span(),
                format!("`{}` is not a path pattern", raw.pattern.get_ref()),
                "start the pattern with `/` or `*`, like \"/static/*\" or \"*.css\"",
            );
        }
        if raw.cache_control.get_ref().contains(['\r', '\n'])
            || raw.cache_control.get_ref().is_empty()
        {
            self.mistake(
                raw.cache_control.span(),
                "`cache_control` must be one non-empty line",
                "write a value like \"public, max-age=3600\"",
            );
        }
        CacheRule {
            pattern: raw.pattern.get_ref().clone(),
            cache_control: raw.cache_control.get_ref().clone(),
        }
    }
}
