//! One program run on one crafted frame, through `BPF_PROG_TEST_RUN`: its TC action, the one
//! reason counter it moved, and the frame it left (translated, or turned into an answer).

use weir::dataplane::Dataplane;

use crate::packet::{self, L4, Packet, Tuple};

/// `TC_ACT_REDIRECT`: the action of a packet turned into its answer and sent back.
pub const TC_ACT_REDIRECT: i32 = 7;

/// What one program run did.
#[derive(Debug)]
pub struct Ran {
    /// The TC action.
    pub action: i32,
    /// The name of the pass or drop counter that moved; empty when none did (a packet the
    /// program left alone, as the uplink program does with the node's own traffic).
    pub reason: String,
    /// The frame as the program left it.
    pub out: Vec<u8>,
}

impl Ran {
    /// The frame left, read back with its checksums verified.
    pub fn tuple(&self) -> Tuple {
        packet::checksums(&self.out).unwrap_or_else(|e| panic!("output frame: {e}"))
    }

    /// Checks the action and the reason; `what` names the packet in the failure.
    pub fn expect(&self, action: i32, reason: &str, what: &str) -> &Self {
        assert_eq!(
            (self.action, self.reason.as_str()),
            (action, reason),
            "{what}: action and reason"
        );
        self
    }
}

/// Runs `program` on `pkt`'s frame (whose own checksums are checked first).
pub fn run(dp: &mut Dataplane, program: &'static str, pkt: &Packet) -> Ran {
    let frame = pkt.frame();
    packet::checksums(&frame).expect("the crafted frame itself is right");
    run_frame(dp, program, &frame)
}

/// Runs `program` on `frame`: at most one reason counter may move.
pub fn run_frame(dp: &mut Dataplane, program: &'static str, frame: &[u8]) -> Ran {
    let before = dp.counters().expect("counters");
    let (action, out) = dp
        .test_run_output(program, frame)
        .expect("BPF_PROG_TEST_RUN");
    let after = dp.counters().expect("counters");
    let moved: Vec<&str> = after
        .passed
        .iter()
        .chain(after.dropped.iter())
        .filter(|(k, v)| before.passed.get(*k).or(before.dropped.get(*k)) != Some(v))
        .map(|(k, _)| *k)
        .collect();
    assert!(
        moved.len() <= 1,
        "{program}: at most one reason counter moves per packet, got {moved:?}"
    );
    Ran {
        action,
        reason: moved.first().map(|r| (*r).to_owned()).unwrap_or_default(),
        out,
    }
}

/// A TCP packet from `src`:`sport` to `dst`:`dport` with `flags`.
pub fn tcp(src: &str, sport: u16, dst: &str, dport: u16, flags: u8) -> Packet {
    Packet::new(
        crate::fixtures::ip(src),
        crate::fixtures::ip(dst),
        L4::Tcp {
            src: sport,
            dst: dport,
            flags,
        },
    )
}

/// A UDP datagram from `src`:`sport` to `dst`:`dport`.
pub fn udp(src: &str, sport: u16, dst: &str, dport: u16) -> Packet {
    Packet::new(
        crate::fixtures::ip(src),
        crate::fixtures::ip(dst),
        L4::Udp {
            src: sport,
            dst: dport,
        },
    )
}
