//! MariaDB's global transaction ids (`domain-server-seq`) and lists of them, as
//! `@@gtid_current_pos` and `@@gtid_binlog_pos` give them: parsed, compared (does one
//! position hold everything another does?), and the transactions one server has beyond
//! another's (errant ones, which a rejoin refuses to merge).

use std::fmt;

/// One MariaDB GTID, `domain-server-seq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Gtid {
    pub domain: u32,
    pub server: u32,
    pub seq: u64,
}

impl fmt::Display for Gtid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.domain, self.server, self.seq)
    }
}

/// A MariaDB GTID list as the server prints it (`0-1-42,1-2-7`): a position
/// (`gtid_slave_pos`, `gtid_binlog_pos`: one GTID per domain) or a binlog state
/// (`gtid_binlog_state`: one per domain and server).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GtidList(pub Vec<Gtid>);

impl GtidList {
    /// Parses the server's text; empty text is the empty list.
    pub fn parse(text: &str) -> Result<GtidList, String> {
        let mut list = Vec::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let parts: Vec<&str> = item.split('-').collect();
            let parsed = match parts.as_slice() {
                [d, s, q] => (d.parse(), s.parse(), q.parse()),
                _ => return Err(format!("`{item}` is not a GTID (domain-server-seq)")),
            };
            match parsed {
                (Ok(domain), Ok(server), Ok(seq)) => list.push(Gtid {
                    domain,
                    server,
                    seq,
                }),
                _ => return Err(format!("`{item}` is not a GTID (domain-server-seq)")),
            }
        }
        Ok(GtidList(list))
    }

    /// The highest sequence number in `domain` (0 when the domain is absent).
    pub fn seq(&self, domain: u32) -> u64 {
        self.0
            .iter()
            .filter(|g| g.domain == domain)
            .map(|g| g.seq)
            .max()
            .unwrap_or(0)
    }

    /// Whether this position is at least as far as `other` in every domain of `other`.
    pub fn covers(&self, other: &GtidList) -> bool {
        other.0.iter().all(|g| self.seq(g.domain) >= g.seq)
    }

    /// The GTIDs of this binlog state that `state` (another server's binlog state) does
    /// not include: for each domain and server, a sequence number past what `state` has
    /// from that server in that domain. Non-empty means this server holds transactions
    /// the other lacks (errant ones, when the other is the new primary).
    pub fn beyond(&self, state: &GtidList) -> Vec<Gtid> {
        self.0
            .iter()
            .filter(|g| {
                let theirs = state
                    .0
                    .iter()
                    .filter(|s| s.domain == g.domain && s.server == g.server)
                    .map(|s| s.seq)
                    .max();
                theirs.is_none_or(|seq| seq < g.seq)
            })
            .copied()
            .collect()
    }

    /// The sum of every domain's sequence number: a total order for ranking replicas
    /// when neither covers the other (several domains).
    pub(crate) fn total(&self) -> u64 {
        self.0.iter().map(|g| g.seq).sum()
    }
}

impl fmt::Display for GtidList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let items: Vec<String> = self.0.iter().map(Gtid::to_string).collect();
        f.write_str(&items.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gtid_lists_parse_compare_and_find_errant_transactions() {
        let list = GtidList::parse("0-1-42, 1-2-7").unwrap();
        assert_eq!(list.to_string(), "0-1-42,1-2-7");
        assert_eq!(list.seq(0), 42);
        assert_eq!(list.seq(5), 0);
        assert_eq!(GtidList::parse("").unwrap(), GtidList::default());
        for bad in ["0-1", "a-1-2", "0-1-2-3", "0--1"] {
            assert!(GtidList::parse(bad).is_err(), "{bad}");
        }

        let ahead = GtidList::parse("0-1-50").unwrap();
        let behind = GtidList::parse("0-1-49").unwrap();
        assert!(ahead.covers(&behind) && !behind.covers(&ahead));
        assert!(ahead.covers(&GtidList::default()));

        // The new primary took over at 0-1-100 and wrote 0-2-101..105.
        let new_primary = GtidList::parse("0-1-100,0-2-105").unwrap();
        // An old primary with nothing beyond the promotion point rejoins.
        assert!(GtidList::parse("0-1-100")
            .unwrap()
            .beyond(&new_primary)
            .is_empty());
        // One whose last commit never reached a replica is errant, although its
        // sequence number (101) is below the new primary's (105).
        let errant = GtidList::parse("0-1-101").unwrap().beyond(&new_primary);
        assert_eq!(
            errant,
            vec![Gtid {
                domain: 0,
                server: 1,
                seq: 101
            }]
        );
        // A domain the new primary never saw is errant too.
        assert_eq!(
            GtidList::parse("0-1-100,7-1-1")
                .unwrap()
                .beyond(&new_primary)
                .len(),
            1
        );
    }
}
