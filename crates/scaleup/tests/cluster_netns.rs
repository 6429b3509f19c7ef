//! The load-balancer cluster across hosts: network namespaces made by this test
//! (client, lb1, lb2, web on one bridge, private addresses that exist only inside
//! them). The floating IP moves to lb2 when lb1 dies and the client follows it
//! thanks to our gratuitous ARP; it moves back when lb1 returns (preempt on); after
//! a partition heals exactly one node keeps it.
//!
//! Needs root and iproute2 (installed by scripts/install-test-deps). Outside CI the
//! test says so and passes when it cannot run; under CI=true it fails instead.

mod common;

use std::time::Duration;

use common::netns::*;
use nix::sys::signal::Signal;

#[test]
fn floating_ip_moves_with_gratuitous_arp_and_a_healed_partition_keeps_one_owner() {
    if !can_run() {
        return;
    }
    let hosts = Hosts::new(&[("client", 10), ("lb1", 11), ("lb2", 12), ("web", 13)]);
    let state = tempfile::tempdir().unwrap();
    let site = state.path().join("site.toml");
    let rest = r#"
[[web]]
name = "web1"
listen = "10.201.0.13:80"
admin = "127.0.0.1:9013"

[[app]]
name = "app1"
listen = "127.0.0.1:8004"
admin = "127.0.0.1:9014"
"#;
    std::fs::write(&site, cluster_site(state.path(), true) + rest).unwrap();
    std::env::set_var("SCALEUP_TEST_SECRET", "a shared secret");

    let _app = hosts.run("web", "app1", &site);
    let _web = hosts.run("web", "web1", &site);
    let lb1 = hosts.run("lb1", "lb1", &site);
    wait_until("lb1 takes the floating IP", Duration::from_secs(30), || {
        hosts.holds_vip("lb1")
    });
    // Served (lb1 has seen web1 up) before lb2 joins: a load balancer whose web
    // servers are all down hands the address to a healthy peer, and web1 starts at the
    // same time as lb1.
    wait_until(
        "the client reaches the site",
        Duration::from_secs(30),
        || hosts.client_get(),
    );
    let _lb2 = hosts.run("lb2", "lb2", &site);
    std::thread::sleep(Duration::from_millis(500));
    assert!(!hosts.holds_vip("lb2"), "lb2 stays passive");
    assert!(
        hosts.client_sees().contains(&hosts.mac("lb1")),
        "{}",
        hosts.client_sees()
    );

    // lb1 dies: lb2 takes the IP and announces it; the client follows.
    lb1.signal(Signal::SIGKILL);
    drop(lb1);
    let took = wait_until("lb2 takes the floating IP", Duration::from_secs(5), || {
        hosts.holds_vip("lb2")
    });
    wait_until("the client reaches lb2", Duration::from_secs(5), || {
        hosts.client_get()
    });
    assert!(
        hosts.client_sees().contains(&hosts.mac("lb2")),
        "the client's ARP entry points at lb2 after our announcement: {}",
        hosts.client_sees()
    );
    eprintln!("lb2 held the IP {took:?} after SIGKILL of lb1");

    // lb1 returns; with preempt on it takes the address back, lb2 releases it.
    let _lb1 = hosts.run("lb1", "lb1", &site);
    wait_until("lb1 takes the IP back", Duration::from_secs(10), || {
        hosts.holds_vip("lb1") && !hosts.holds_vip("lb2")
    });
    wait_until("the client reaches lb1", Duration::from_secs(5), || {
        hosts.client_get() && hosts.client_sees().contains(&hosts.mac("lb1"))
    });

    // Partition: both stop hearing each other and both take the IP.
    hosts.partition(true);
    wait_until(
        "both active during the partition",
        Duration::from_secs(5),
        || hosts.holds_vip("lb1") && hosts.holds_vip("lb2"),
    );
    // Healed: within about one interval exactly one keeps it, and the client reaches it.
    hosts.partition(false);
    let settled = wait_until("one owner after the heal", Duration::from_secs(2), || {
        hosts.holds_vip("lb1") && !hosts.holds_vip("lb2")
    });
    eprintln!("the split settled {settled:?} after the heal");
    wait_until(
        "the client reaches lb1 after the heal",
        Duration::from_secs(5),
        || hosts.client_get() && hosts.client_sees().contains(&hosts.mac("lb1")),
    );
}
