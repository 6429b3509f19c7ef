//! The nodes as a whole: one name each, references that point at a node of the
//! right role, every role present, and no two nodes on one address.

use super::*;

impl Checker<'_> {
    pub(super) fn node(
        &mut self,
        name: &Spanned<String>,
        listen: &Spanned<String>,
        bind: Option<&Spanned<String>>,
        admin: &Spanned<String>,
    ) -> Node {
        let listen_addr = self.address(listen, "listen");
        Node {
            name: name.get_ref().clone(),
            listen: listen_addr,
            bind: bind.map(|b| self.address(b, "bind")).unwrap_or(listen_addr),
            admin: self.address(admin, "admin"),
        }
    }

    /// Every node name once, well formed; returns each name's role.
    pub(super) fn check_names(&mut self, raw: &RawSite) -> HashMap<String, Role> {
        let names = raw
            .lb
            .iter()
            .map(|n| (Role::Lb, &n.name))
            .chain(raw.web.iter().map(|n| (Role::Web, &n.name)))
            .chain(raw.app.iter().map(|n| (Role::App, &n.name)));
        let mut seen: HashMap<String, (Role, Range<usize>)> = HashMap::new();
        for (role, name) in names {
            let value = name.get_ref();
            let well_formed = !value.is_empty()
                && value.len() <= 63
                && value
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !well_formed {
                self.mistake(
                    name.span(),
                    format!("`{value}` is not a node name"),
                    "use 1 to 63 lowercase letters, digits or dashes, like \"web1\"",
                );
            }
            if let Some((_, first)) = seen.get(value) {
                let (line, _) = crate::error::line_column(self.text, first.start);
                self.mistake(
                    name.span(),
                    format!("node name `{value}` is already used at line {line}"),
                    "give every node its own name, like \"web2\"",
                );
            } else {
                seen.insert(value.clone(), (role, name.span()));
            }
        }
        seen.into_iter().map(|(k, (role, _))| (k, role)).collect()
    }

    pub(super) fn references(
        &mut self,
        list: &[Spanned<String>],
        roles: &HashMap<String, Role>,
        want: Role,
        key: &str,
    ) -> Vec<String> {
        let candidates: Vec<&str> = {
            let mut c: Vec<&str> = roles
                .iter()
                .filter(|(_, r)| **r == want)
                .map(|(n, _)| n.as_str())
                .collect();
            c.sort_unstable();
            c
        };
        let mut out = Vec::new();
        for name in list {
            match roles.get(name.get_ref()) {
                Some(role) if *role == want => out.push(name.get_ref().clone()),
                Some(role) => self.mistake(
                    name.span(),
                    format!(
                        "`{}` is a {role} node, but `{key}` lists {want} nodes",
                        name.get_ref()
                    ),
                    format!("name one of the {want} nodes: {}", candidates.join(", ")),
                ),
                None => self.mistake(
                    name.span(),
                    format!("there is no node called `{}`", name.get_ref()),
                    if candidates.is_empty() {
                        format!("add a [[{want}]] node with this name")
                    } else {
                        format!(
                            "name one of the {want} nodes ({}) or add a [[{want}]] node",
                            candidates.join(", ")
                        )
                    },
                ),
            }
        }
        if list.is_empty() {
            self.mistakes.push(Mistake::at(
                self.text,
                0..0,
                format!("`{key}` is empty"),
                Some(format!("list at least one {want} node")),
            ));
        }
        out
    }

    pub(super) fn check_roles_present(&mut self, raw: &RawSite) {
        for (count, role, why) in [
            (
                raw.lb.len(),
                Role::Lb,
                "clients enter the site through a load balancer",
            ),
            (
                raw.web.len(),
                Role::Web,
                "the load balancers need a web server to send to",
            ),
            (
                raw.app.len(),
                Role::App,
                "the web servers need an application server",
            ),
        ] {
            if count == 0 {
                self.mistakes.push(Mistake::at(
                    self.text,
                    0..0,
                    format!("the site has no {role} node: {why}"),
                    Some(format!(
                        "add a [[{role}]] table with name, listen and admin addresses"
                    )),
                ));
            }
        }
    }

    /// Two nodes of one site cannot bind the same address.
    pub(super) fn check_addresses(&mut self, raw: &RawSite) {
        let mut seen: HashMap<String, String> = HashMap::new();
        // In local mode the floating addresses are bound by the load balancers too.
        if let Some(cluster) = &raw.cluster {
            let c = cluster.get_ref();
            if c.mode.as_ref().is_none_or(|m| m.get_ref() == "local") {
                for a in [&c.address, &c.tls_address].into_iter().flatten() {
                    if let Ok(addr) = a.get_ref().parse::<SocketAddr>() {
                        seen.insert(addr.to_string(), "the cluster's floating address".into());
                    }
                }
            }
        }
        let all = raw
            .lb
            .iter()
            .map(|n| {
                let addrs = [Some(&n.listen), n.bind.as_ref(), Some(&n.admin)];
                (&n.name, addrs, n.tls_listen.as_ref())
            })
            .chain(
                raw.lb
                    .iter()
                    .map(|n| (&n.name, [n.heartbeat.as_ref(), None, None], None)),
            )
            .chain(raw.web.iter().map(|n| {
                let addrs = [Some(&n.listen), n.bind.as_ref(), Some(&n.admin)];
                (&n.name, addrs, n.tls_listen.as_ref())
            }))
            .chain(raw.app.iter().map(|n| {
                let addrs = [Some(&n.listen), n.bind.as_ref(), Some(&n.admin)];
                (&n.name, addrs, None)
            }));
        for (name, addrs, tls) in all {
            // `bind` replaces `listen` as what is bound; count each address once per node.
            let bound = [addrs[1].or(addrs[0]), addrs[2], tls];
            for addr in bound.into_iter().flatten() {
                let Ok(parsed) = addr.get_ref().parse::<SocketAddr>() else {
                    continue;
                };
                if parsed.port() == 0 {
                    continue;
                }
                let key = parsed.to_string();
                if let Some(owner) = seen.get(&key) {
                    let message = format!(
                        "`{key}` is already used by {owner}; two listeners cannot share an address"
                    );
                    self.mistake(addr.span(), message, "give this listener its own port");
                } else {
                    seen.insert(key, format!("node `{}`", name.get_ref()));
                }
            }
        }
    }
}
