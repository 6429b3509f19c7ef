//! The load-balancer cluster and HTTPS: the floating address, its secret, the
//! certificate, and whether the site that offers HTTPS also redirects to it.

use super::*;

impl Checker<'_> {
    pub(super) fn tls(&mut self, raw: Option<&RawTls>, base: &Path) -> Tls {
        let hsts = match raw.and_then(|t| t.hsts.as_deref()) {
            Some("") => None,
            Some(value) => Some(value.to_string()),
            None => Some("max-age=63072000".to_string()),
        };
        let files = match raw.map(|t| (&t.cert, &t.key)) {
            Some((Some(cert), Some(key))) => Some(TlsFiles {
                cert: absolute(base, cert.get_ref()),
                key: absolute(base, key.get_ref()),
            }),
            Some((Some(one), None)) | Some((None, Some(one))) => {
                self.mistake(
                    one.span(),
                    "`cert` and `key` go together",
                    "give both the certificate chain and its private key (PEM files), \
                     or neither for a self-signed certificate",
                );
                None
            }
            _ => None,
        };
        Tls { files, hsts }
    }

    pub(super) fn tls_mode(&mut self, raw: Option<&Spanned<String>>) -> TlsMode {
        let Some(raw) = raw else { return TlsMode::Tcp };
        match raw.get_ref().as_str() {
            "tcp" => TlsMode::Tcp,
            "http" => TlsMode::Http,
            other => {
                self.mistake(
                    raw.span(),
                    format!("unknown tls_mode `{other}`"),
                    "write \"tcp\" (pass TLS through to the web servers) or \"http\" \
                     (end TLS at the load balancer)",
                );
                TlsMode::Tcp
            }
        }
    }

    /// An HTTPS frontend in `tcp` mode passes TLS to the web servers, so every web
    /// server of the pool needs a `tls_listen`.
    pub(super) fn check_https(&mut self, raw: &RawSite, balancer: &Balancer) {
        let Some(frontend) = raw.lb.iter().find_map(|l| l.tls_listen.as_ref()) else {
            return;
        };
        if balancer.tls_mode != TlsMode::Tcp {
            return;
        }
        let missing: Vec<&str> = raw
            .web
            .iter()
            .filter(|w| balancer.servers.contains(w.name.get_ref()) && w.tls_listen.is_none())
            .map(|w| w.name.get_ref().as_str())
            .collect();
        if !missing.is_empty() {
            self.mistake(
                frontend.span(),
                format!(
                    "this HTTPS frontend passes TLS through (tls_mode = \"tcp\"), but web \
                     server {} has no `tls_listen`",
                    missing.join(", ")
                ),
                "add `tls_listen` to those [[web]] nodes, or set `tls_mode = \"http\"` in \
                 [balancer] to end TLS at the load balancers",
            );
        }
    }

    pub(super) fn cluster(&mut self, raw: &Spanned<RawCluster>, lbs: &[RawLb]) -> Cluster {
        let span = raw.span();
        let c = raw.get_ref();
        if lbs.len() != 2 {
            self.mistake(
                span.clone(),
                format!(
                    "a cluster is two load balancers; this site has {}",
                    lbs.len()
                ),
                "keep exactly two [[lb]] nodes, or remove [cluster]",
            );
        }
        for lb in lbs {
            if lb.heartbeat.is_none() {
                self.mistake(
                    lb.name.span(),
                    format!(
                        "load balancer `{}` has no heartbeat address",
                        lb.name.get_ref()
                    ),
                    "add `heartbeat = \"IP:PORT\"` to this [[lb]]: the peer sends heartbeats there",
                );
            }
        }
        let mode = c.mode.as_ref().map_or("local", |m| m.get_ref().as_str());
        let need_address = |checker: &mut Self| {
            checker.mistake(
                span.clone(),
                format!("a `{mode}` cluster needs `address`"),
                match mode {
                    "linux" => "write the floating IP with its prefix and port, like address = \"10.0.0.100/24:80\"",
                    _ => "write the floating ip:port, like address = \"127.0.0.1:8080\"",
                },
            )
        };
        let floating = match mode {
            "local" => Floating::Local {
                address: match &c.address {
                    Some(a) => self.address(a, "address"),
                    None => {
                        need_address(self);
                        SocketAddr::from(([127, 0, 0, 1], 0))
                    }
                },
                tls_address: c
                    .tls_address
                    .as_ref()
                    .map(|a| self.address(a, "tls_address")),
            },
            "linux" => {
                let interface = c.interface.clone().unwrap_or_else(|| {
                    self.mistake(
                        span.clone(),
                        "a `linux` cluster needs `interface`",
                        "name the network interface that carries the floating IP, like interface = \"eth0\"",
                    );
                    String::new()
                });
                let (address, prefix, port) = match &c.address {
                    Some(a) => self.cidr_with_port(a),
                    None => {
                        need_address(self);
                        (std::net::IpAddr::from([0, 0, 0, 0]), 32, 0)
                    }
                };
                Floating::Linux {
                    interface,
                    address,
                    prefix,
                    port,
                }
            }
            "hook" => {
                if c.on_active.is_none() {
                    self.mistake(
                        span.clone(),
                        "a `hook` cluster needs `on_active`",
                        "write the command that moves the address here, like on_active = \"/usr/local/bin/take-vip\"",
                    );
                }
                Floating::Hook {
                    on_active: c.on_active.clone(),
                    on_passive: c.on_passive.clone(),
                    address: c.address.as_ref().map(|a| a.get_ref().clone()),
                }
            }
            other => {
                let at = c.mode.as_ref().map_or(span.clone(), Spanned::span);
                self.mistake(
                    at,
                    format!("unknown cluster mode `{other}`"),
                    "write \"local\", \"linux\" or \"hook\"",
                );
                Floating::Local {
                    address: SocketAddr::from(([127, 0, 0, 1], 0)),
                    tls_address: None,
                }
            }
        };
        let secret = self.cluster_secret(c, span);
        Cluster {
            floating,
            secret,
            interval: self.duration(c.interval.as_ref(), Duration::from_millis(100)),
            dead_after: self.count(c.dead_after.as_ref(), 3),
            preempt: c.preempt.unwrap_or(false),
        }
    }

    /// Plain HTTP answers 308 to HTTPS whenever the site has an HTTPS frontend,
    /// unless the file says `https_redirect = false`: a session cookie must not
    /// travel in clear because a browser typed the name without `https://`.
    pub(super) fn https_redirect(&mut self, raw: Option<&Spanned<bool>>, has_https: bool) -> bool {
        let Some(raw) = raw else { return has_https };
        if *raw.get_ref() && !has_https {
            self.mistake(
                raw.span(),
                "`https_redirect = true`, but the site has no HTTPS frontend to send clients to",
                "give the load balancers a `tls_listen` (or the cluster a `tls_address`), \
                 or remove `https_redirect`",
            );
        }
        *raw.get_ref()
    }

    /// Where the heartbeats' key comes from. A cluster must have one: without it
    /// anyone who can send a datagram to a heartbeat port can take the floating
    /// address. Running without is allowed only when the file says so in words
    /// (`insecure_no_secret = true`), and `explain` then lists it as a risk.
    pub(super) fn cluster_secret(&mut self, c: &RawCluster, span: Range<usize>) -> Option<Secret> {
        let no_secret = c.insecure_no_secret.as_ref().filter(|v| *v.get_ref());
        match (&c.secret, &c.secret_env, no_secret) {
            (Some(_), Some(env), _) => {
                self.mistake(
                    env.span(),
                    "both `secret` and `secret_env` are set",
                    "keep one: `secret_env` keeps the secret out of the file",
                );
                None
            }
            (Some(_), None, Some(flag)) | (None, Some(_), Some(flag)) => {
                self.mistake(
                    flag.span(),
                    "`insecure_no_secret = true`, but a secret is set",
                    "remove `insecure_no_secret`: with a secret the heartbeats are signed",
                );
                None
            }
            (Some(secret), None, None) => {
                if secret.get_ref().is_empty() {
                    self.mistake(
                        secret.span(),
                        "the cluster secret is empty: heartbeats would be signed with an empty key",
                        "write a long random secret (`openssl rand -hex 32`), the same on both \
                         load balancers; better, `secret_env = \"SCALEUP_CLUSTER_SECRET\"` keeps \
                         it out of the file",
                    );
                }
                Some(Secret::Literal(secret.get_ref().clone()))
            }
            (None, Some(env), None) => {
                let name = env.get_ref();
                let valid = !name.is_empty()
                    && !name.starts_with(|c: char| c.is_ascii_digit())
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    self.mistake(
                        env.span(),
                        format!("`{name}` is not an environment variable name"),
                        "write a name of letters, digits and `_`, like \"SCALEUP_CLUSTER_SECRET\"",
                    );
                }
                Some(Secret::Env(name.clone()))
            }
            (None, None, Some(_)) => None,
            (None, None, None) => {
                self.mistake(
                    span,
                    "this cluster has no secret: anyone who can send a datagram to a heartbeat \
                     port could take the floating address",
                    "add `secret_env = \"SCALEUP_CLUSTER_SECRET\"` and export that variable with \
                     the same random value (`openssl rand -hex 32`) on both load balancers, or \
                     write `secret = \"...\"`; on a network you trust completely, \
                     `insecure_no_secret = true` runs without one",
                );
                None
            }
        }
    }
}
