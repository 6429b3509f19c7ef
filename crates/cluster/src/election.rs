//! Who holds the floating address: a pure state machine, fed with events and the
//! current time, that answers with the transition to make (if any). Keeping it free
//! of sockets and clocks lets the tests walk it through partitions, restarts and
//! handovers in microseconds.
//!
//! The rules, for two nodes:
//! - rank: higher effective priority wins; on a tie, the name that sorts first;
//! - a node whose backends are all down has effective priority 0;
//! - no live peer: become active (after waiting one dead interval at start, so a
//!   node joining a running pair does not grab the address);
//! - both active (a healed partition): the lower-ranked steps down at once;
//! - both passive: the higher-ranked becomes active;
//! - active with a higher-ranked passive peer: hand over if `preempt` is on, or if
//!   this node's backends are down and the peer's are not;
//! - a peer that says it is leaving, or whose heartbeat link closes (its process
//!   died: the kernel closed its sockets), is gone at once, without missed beats.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

use crate::wire::{Beat, State};

/// A change of state, with the reason a person reads in the logs and on `/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: State,
    pub to: State,
    pub reason: String,
}

/// What this node knows of its peer.
#[derive(Debug, Clone)]
pub struct PeerView {
    pub name: String,
    pub state: State,
    pub priority: u8,
    pub healthy: bool,
    /// When its last beat arrived.
    pub last_seen: Instant,
    /// Its heartbeat link closed since that beat: its process is gone.
    pub gone: bool,
}

/// The election of one node.
#[derive(Debug)]
pub struct Election {
    name: String,
    priority: u8,
    preempt: bool,
    dead_after: Duration,
    started: Instant,
    state: State,
    healthy: bool,
    peer: Option<PeerView>,
    /// The last transitions, newest last.
    history: VecDeque<(SystemTime, Transition)>,
}

/// How many transitions `/status` keeps.
const HISTORY: usize = 32;

fn outranks(a: (u8, &str), b: (u8, &str)) -> bool {
    a.0 > b.0 || (a.0 == b.0 && a.1 < b.1)
}

impl Election {
    /// A node that starts passive at `now`.
    pub fn new(
        name: &str,
        priority: u8,
        preempt: bool,
        dead_after: Duration,
        now: Instant,
    ) -> Election {
        Election {
            name: name.to_string(),
            priority,
            preempt,
            dead_after,
            started: now,
            state: State::Passive,
            healthy: true,
            peer: None,
            history: VecDeque::new(),
        }
    }

    /// This node's state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The priority this node announces: 0 when its backends are all down.
    pub fn effective_priority(&self) -> u8 {
        if self.healthy {
            self.priority
        } else {
            0
        }
    }

    /// Whether at least one backend of this node is up.
    pub fn healthy(&self) -> bool {
        self.healthy
    }

    /// What this node knows of its peer.
    pub fn peer(&self) -> Option<&PeerView> {
        self.peer.as_ref()
    }

    /// The last transitions, oldest first.
    pub fn history(&self) -> impl Iterator<Item = &(SystemTime, Transition)> {
        self.history.iter()
    }

    /// A beat from the peer arrived (already authenticated and checked for replay).
    pub fn on_beat(&mut self, beat: &Beat, now: Instant) -> Option<Transition> {
        self.peer = Some(PeerView {
            name: beat.name.clone(),
            state: beat.state,
            priority: beat.priority,
            healthy: beat.healthy,
            last_seen: now,
            gone: false,
        });
        self.decide(now)
    }

    /// Time passed; call at [`Election::next_deadline`].
    pub fn on_tick(&mut self, now: Instant) -> Option<Transition> {
        self.decide(now)
    }

    /// The heartbeat link to the peer closed: its process is gone.
    pub fn on_link_lost(&mut self, now: Instant) -> Option<Transition> {
        if let Some(peer) = &mut self.peer {
            peer.gone = true;
        }
        self.decide(now)
    }

    /// This node's backends became healthy or all unhealthy.
    pub fn set_healthy(&mut self, healthy: bool, now: Instant) -> Option<Transition> {
        self.healthy = healthy;
        self.decide(now)
    }

    /// This node is stopping on purpose.
    pub fn leave(&mut self) -> Option<Transition> {
        self.change(
            State::Leaving,
            "stopping: handing the address to the peer".into(),
        )
    }

    /// When the next time-driven decision is due: the peer's beats running out, or
    /// the wait at start.
    pub fn next_deadline(&self) -> Option<Instant> {
        match &self.peer {
            Some(peer) if !peer.gone => Some(peer.last_seen + self.dead_after),
            Some(_) => None,
            None if self.state == State::Passive => Some(self.started + self.dead_after),
            None => None,
        }
    }

    /// Whether the peer is heard from and not gone: someone to hand over to.
    pub fn peer_is_alive(&self, now: Instant) -> bool {
        self.peer_alive(now).is_some()
    }

    fn peer_alive(&self, now: Instant) -> Option<&PeerView> {
        self.peer
            .as_ref()
            .filter(|p| !p.gone && now.duration_since(p.last_seen) < self.dead_after)
    }

    fn decide(&mut self, now: Instant) -> Option<Transition> {
        if self.state == State::Leaving {
            return None;
        }
        let me = (self.effective_priority(), self.name.as_str());
        let Some(peer) = self.peer_alive(now) else {
            if self.state == State::Active {
                return None;
            }
            let reason = match &self.peer {
                None if now.duration_since(self.started) < self.dead_after => return None,
                None => format!("no peer heard within {:?} of starting", self.dead_after),
                Some(p) if p.gone => format!(
                    "the heartbeat link to {} closed: its process is gone",
                    p.name
                ),
                Some(p) if p.state == State::Leaving => format!("{} left", p.name),
                Some(p) => format!(
                    "no heartbeat from {} for {:?}",
                    p.name,
                    now.duration_since(p.last_seen)
                ),
            };
            return self.change(State::Active, reason);
        };
        let them = (peer.priority, peer.name.as_str());
        let (peer_name, peer_state, peer_healthy) = (peer.name.clone(), peer.state, peer.healthy);
        match (self.state, peer_state) {
            (State::Passive, State::Leaving) => self.change(State::Active, format!("{peer_name} is leaving")),
            (State::Active, State::Active) if outranks(them, me) => self.change(
                State::Passive,
                format!("both active (a healed split?): {peer_name} outranks this node and keeps the address"),
            ),
            (State::Active, State::Passive)
                if outranks(them, me) && (self.preempt || (!self.healthy && peer_healthy)) =>
            {
                let why = if self.healthy {
                    "it has the higher priority (preempt is on)"
                } else {
                    "this node's backends are all down"
                };
                self.change(State::Passive, format!("handing over to {peer_name}: {why}"))
            }
            (State::Passive, State::Passive) if outranks(me, them) => {
                self.change(State::Active, format!("both passive: this node outranks {peer_name}"))
            }
            _ => None,
        }
    }

    fn change(&mut self, to: State, reason: String) -> Option<Transition> {
        if self.state == to {
            return None;
        }
        let transition = Transition {
            from: self.state,
            to,
            reason,
        };
        self.state = to;
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history
            .push_back((SystemTime::now(), transition.clone()));
        Some(transition)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEAD: Duration = Duration::from_millis(300);

    fn beat(name: &str, state: State, priority: u8) -> Beat {
        Beat {
            name: name.into(),
            state,
            priority,
            healthy: priority > 0,
            boot: 1,
            seq: 1,
            config: None,
        }
    }

    #[test]
    fn alone_at_start_becomes_active_after_one_dead_interval() {
        let t0 = Instant::now();
        let mut e = Election::new("lb1", 150, true, DEAD, t0);
        assert_eq!(e.next_deadline(), Some(t0 + DEAD));
        assert_eq!(e.on_tick(t0 + DEAD / 2), None);
        let t = e.on_tick(t0 + DEAD).unwrap();
        assert_eq!(t.to, State::Active);
        assert!(t.reason.contains("no peer heard"));
    }

    #[test]
    fn joining_a_running_pair_stays_passive() {
        let t0 = Instant::now();
        let mut e = Election::new("lb1", 150, false, DEAD, t0);
        assert_eq!(e.on_beat(&beat("lb2", State::Active, 100), t0), None);
        assert_eq!(e.on_tick(t0 + DEAD / 2), None);
        assert_eq!(
            e.state(),
            State::Passive,
            "no preempt: lb2 keeps the address"
        );
    }

    #[test]
    fn missed_beats_link_loss_and_leaving_each_take_over() {
        let t0 = Instant::now();
        for (event, expect) in [
            ("missed", "no heartbeat"),
            ("link", "link"),
            ("leaving", "leaving"),
        ] {
            let mut e = Election::new("lb2", 100, true, DEAD, t0);
            e.on_beat(&beat("lb1", State::Active, 150), t0);
            let t = match event {
                "missed" => {
                    assert_eq!(e.next_deadline(), Some(t0 + DEAD));
                    assert_eq!(e.on_tick(t0 + DEAD - Duration::from_millis(1)), None);
                    e.on_tick(t0 + DEAD)
                }
                "link" => e.on_link_lost(t0 + Duration::from_millis(1)),
                _ => e.on_beat(
                    &beat("lb1", State::Leaving, 150),
                    t0 + Duration::from_millis(1),
                ),
            }
            .unwrap();
            assert_eq!(t.to, State::Active, "{event}");
            assert!(t.reason.contains(expect), "{event}: {}", t.reason);
        }
    }

    #[test]
    fn a_healed_split_leaves_exactly_one_active() {
        let t0 = Instant::now();
        let mut lb1 = Election::new("lb1", 150, false, DEAD, t0);
        let mut lb2 = Election::new("lb2", 100, false, DEAD, t0);
        // Partition: neither hears the other; both take the address.
        lb1.on_tick(t0 + DEAD);
        lb2.on_tick(t0 + DEAD);
        assert_eq!((lb1.state(), lb2.state()), (State::Active, State::Active));
        // Healed: the first beat each receives settles it.
        let t = t0 + DEAD * 2;
        assert_eq!(lb1.on_beat(&beat("lb2", State::Active, 100), t), None);
        let step_down = lb2.on_beat(&beat("lb1", State::Active, 150), t).unwrap();
        assert_eq!(step_down.to, State::Passive);
        assert!(step_down.reason.contains("lb1 outranks"));
    }

    #[test]
    fn equal_priorities_are_settled_by_name() {
        let t0 = Instant::now();
        let mut b = Election::new("b", 100, false, DEAD, t0);
        let mut a = Election::new("a", 100, false, DEAD, t0);
        assert_eq!(b.on_beat(&beat("a", State::Passive, 100), t0), None);
        assert_eq!(
            a.on_beat(&beat("b", State::Passive, 100), t0).unwrap().to,
            State::Active
        );
    }

    #[test]
    fn preempt_hands_back_and_no_preempt_does_not() {
        let t0 = Instant::now();
        let mut lb2 = Election::new("lb2", 100, true, DEAD, t0);
        lb2.on_tick(t0 + DEAD);
        assert_eq!(lb2.state(), State::Active);
        let t = lb2
            .on_beat(&beat("lb1", State::Passive, 150), t0 + DEAD)
            .unwrap();
        assert_eq!(t.to, State::Passive);
        assert!(t.reason.contains("preempt"));

        let mut lb2 = Election::new("lb2", 100, false, DEAD, t0);
        lb2.on_tick(t0 + DEAD);
        assert_eq!(
            lb2.on_beat(&beat("lb1", State::Passive, 150), t0 + DEAD),
            None
        );
        assert_eq!(lb2.state(), State::Active);
    }

    #[test]
    fn an_active_node_without_backends_hands_over_to_a_healthy_peer() {
        let t0 = Instant::now();
        let mut lb1 = Election::new("lb1", 150, false, DEAD, t0);
        lb1.on_tick(t0 + DEAD);
        lb1.on_beat(&beat("lb2", State::Passive, 100), t0 + DEAD);
        assert_eq!(lb1.effective_priority(), 150);
        let t = lb1.set_healthy(false, t0 + DEAD).unwrap();
        assert_eq!(t.to, State::Passive);
        assert!(t.reason.contains("backends are all down"));
        assert_eq!(lb1.effective_priority(), 0);
        // And the peer, seeing both passive with itself ahead, takes the address.
        let mut lb2 = Election::new("lb2", 100, false, DEAD, t0);
        lb2.on_beat(&beat("lb1", State::Active, 150), t0);
        let t = lb2
            .on_beat(&beat("lb1", State::Passive, 0), t0 + DEAD / 2)
            .unwrap();
        assert_eq!(t.to, State::Active);
    }

    #[test]
    fn leaving_is_final_and_recorded() {
        let t0 = Instant::now();
        let mut e = Election::new("lb1", 150, false, DEAD, t0);
        e.on_tick(t0 + DEAD);
        assert_eq!(e.leave().unwrap().to, State::Leaving);
        assert_eq!(e.on_tick(t0 + DEAD * 10), None);
        let states: Vec<State> = e.history().map(|(_, t)| t.to).collect();
        assert_eq!(states, [State::Active, State::Leaving]);
    }
}
